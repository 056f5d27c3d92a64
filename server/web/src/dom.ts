// Small DOM helpers: lookups, templates, and errors shown next to the control they are about.

import { AudioFormat } from "./gen/son1k/v1/son1k_pb";

export function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el as T;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: { className?: string; text?: string; attrs?: Record<string, string> } = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (props.className) el.className = props.className;
  if (props.text !== undefined) el.textContent = props.text;
  for (const [k, v] of Object.entries(props.attrs ?? {})) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

const ID_ATTRS = ["id", "for", "aria-describedby", "aria-labelledby", "aria-controls"];

/** A copy of <template id=tplId> with every "P-" id (and reference to one) given `prefix`. */
export function instantiate(tplId: string, prefix: string): DocumentFragment {
  const frag = $<HTMLTemplateElement>(tplId).content.cloneNode(true) as DocumentFragment;
  for (const el of frag.querySelectorAll("*")) {
    for (const a of ID_ATTRS) {
      const v = el.getAttribute(a);
      if (v) el.setAttribute(a, v.split(/\s+/).map((x) => x.replace(/^P-/, `${prefix}-`)).join(" "));
    }
  }
  return frag;
}

function describedBy(el: HTMLElement, id: string, on: boolean): void {
  const ids = new Set((el.getAttribute("aria-describedby") ?? "").split(/\s+/).filter(Boolean));
  if (on) ids.add(id);
  else ids.delete(id);
  if (ids.size) el.setAttribute("aria-describedby", [...ids].join(" "));
  else el.removeAttribute("aria-describedby");
}

/**
 * Shows `message` (text, or nodes) in the error line that belongs to `control` (#<id>-err)
 * (rewritten only when it changes: the line is an alert, read out at each change), and marks the
 * control invalid for screen readers (aria-invalid, aria-describedby). A button only gets
 * aria-describedby: aria-invalid belongs to things that take a value.
 */
export function showError(control: HTMLElement, message: string | Node[], focus = false): void {
  const err = $(`${control.id}-err`);
  if (typeof message !== "string") err.replaceChildren(...message);
  else if (err.textContent !== message) err.textContent = message;
  err.hidden = false;
  if (control.tagName !== "BUTTON") control.setAttribute("aria-invalid", "true");
  describedBy(control, err.id, true);
  control.closest(".field, .token-field")?.classList.add("invalid");
  if (focus) control.focus({ preventScroll: false });
}

export function clearError(control: HTMLElement): void {
  const err = document.getElementById(`${control.id}-err`);
  if (err) {
    err.hidden = true;
    err.textContent = "";
    describedBy(control, err.id, false);
  }
  control.removeAttribute("aria-invalid");
  control.closest(".field, .token-field")?.classList.remove("invalid");
}

/** Clears every error line inside `root`. */
export function clearErrors(root: ParentNode): void {
  for (const err of root.querySelectorAll<HTMLElement>(".err")) {
    const control = document.getElementById(err.id.replace(/-err$/, ""));
    if (control) clearError(control);
    else err.hidden = true;
  }
}

export const FORMATS: Record<number, { name: string; ext: string; mime: string }> = {
  [AudioFormat.UNSPECIFIED]: { name: "WAV", ext: "wav", mime: "audio/wav" },
  [AudioFormat.WAV]: { name: "WAV", ext: "wav", mime: "audio/wav" },
  [AudioFormat.FLAC]: { name: "FLAC", ext: "flac", mime: "audio/flac" },
  [AudioFormat.MP3]: { name: "MP3", ext: "mp3", mime: "audio/mpeg" },
  [AudioFormat.OPUS]: { name: "Opus", ext: "opus", mime: "audio/ogg" },
};

/** A file name from a prompt: "Lo-fi Café, 80 BPM!" → "lo-fi-cafe-80-bpm". */
export function slug(prompt: string): string {
  const s = prompt
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 48)
    .replace(/-+$/, "");
  return s || "son1k";
}

// Son1k Studio: the Generator (text to music) and Ghost Studio (covers) tabs, the token,
// the history, and picking up unfinished jobs after a reload.

import "./app.css";
import { create } from "@bufbuild/protobuf";
import { api, Code, fault, setToken, storedToken, tokenHash, validToken, type Fault } from "./client";
import { $, clearError, clearErrors, h, instantiate, showError } from "./dom";
import { bytes, exactSeconds, fmtNumber, has, t, translatePage, type Key } from "./i18n";
import { loadSaved } from "./job";
import { LivePlayer } from "./live";
import { History } from "./history";
import { JobView } from "./view";
import { peaksOf } from "./wave";
import {
  Capability,
  CoverMode,
  CoverRequestSchema,
  GenerateRequestSchema,
  SamplingSchema,
  type Model,
  type RequestLimits,
  type Sampling,
} from "./gen/son1k/v1/son1k_pb";

/** The server's limits from ListModels; until it answers, its defaults (0 = not known). */
const limits: Pick<
  RequestLimits,
  "maxPromptChars" | "maxSongBytes" | "maxTemperature" | "maxGuidanceScale" | "maxSongSeconds" | "maxDurationSeconds"
> = {
  maxPromptChars: 2000,
  maxSongBytes: 50n * 1024n * 1024n,
  maxTemperature: 5,
  maxGuidanceScale: 20,
  maxSongSeconds: 0,
  maxDurationSeconds: 0,
};
/** Sampling.top_k is a uint32. */
const MAX_TOP_K = 4294967295;
const maxSongBytes = (): number => Number(limits.maxSongBytes);
const TAB_KEY = "son1k.tab";

type Prefix = "gen" | "cover";

// ---- the static page ----
for (const p of ["gen", "cover"] as const) {
  document.querySelector(`.settings[data-prefix="${p}"]`)!.replaceWith(instantiate("settings-tpl", p));
}
translatePage();
function showLimits(): void {
  $("cover-drop-hint").textContent = t("cover.drop.hint", { limit: bytes(maxSongBytes()) });
  for (const p of ["gen", "cover"] as const) {
    $<HTMLTextAreaElement>(`${p}-prompt`).maxLength = limits.maxPromptChars;
    $<HTMLInputElement>(`${p}-temperature`).max = String(limits.maxTemperature);
    $<HTMLInputElement>(`${p}-guidance`).max = String(limits.maxGuidanceScale);
  }
}
showLimits();
$<HTMLInputElement>("gen-duration").value = "10";
$<HTMLInputElement>("cover-duration").value = "0";
$("cover-duration").setAttribute("aria-describedby", "cover-duration-hint");
$("cover-duration").insertAdjacentElement(
  "afterend",
  Object.assign(document.createElement("p"), { className: "hint", id: "cover-duration-hint", textContent: t("cover.duration.hint") }),
);

const history = new History();

// ---- token: used once typed (on change or Enter), never while it is being typed ----
const tokenInput = $<HTMLInputElement>("token");
tokenInput.value = storedToken();
tokenInput.addEventListener("input", () => clearError(tokenInput));
tokenInput.addEventListener("change", () => void applyToken());
$("token-field").addEventListener("submit", (e) => {
  e.preventDefault();
  applyToken();
});
let appliedToken = validToken(tokenInput.value.trim()) ? tokenInput.value.trim() : "";
/** Uses the token in the field; false (saying why at the field) when no header can carry it. */
function applyToken(): boolean {
  const v = tokenInput.value.trim();
  if (!validToken(v)) {
    showError(tokenInput, t("token.invalid"));
    $("token-field").classList.add("attention");
    return false;
  }
  setToken(v);
  if (v === appliedToken) return true;
  appliedToken = v;
  history.clear();
  void loadModels();
  void history.refresh();
  resumeSaved(); // a job this tab left under this token
  return true;
}
function tokenProblem(): void {
  showError(tokenInput, tokenInput.value.trim() ? t("token.wrong") : t("token.needed"));
  $("token-field").classList.add("attention");
}
history.onUnauthenticated = tokenProblem;

// ---- tabs ----
const tabs = [$<HTMLButtonElement>("tab-gen"), $<HTMLButtonElement>("tab-cover")];
function selectTab(tab: HTMLButtonElement, focus = false): void {
  for (const x of tabs) {
    const on = x === tab;
    x.setAttribute("aria-selected", String(on));
    x.tabIndex = on ? 0 : -1;
    $(x.getAttribute("aria-controls")!).hidden = !on;
  }
  if (focus) tab.focus();
  try {
    sessionStorage.setItem(TAB_KEY, tab.id);
  } catch {
    /* ignore */
  }
}
for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (e) => {
    const i = tabs.indexOf(tab);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    selectTab(tabs[(to + tabs.length) % tabs.length], true);
  });
}
{
  let initial = tabs[0];
  try {
    initial = tabs.find((x) => x.id === sessionStorage.getItem(TAB_KEY)) ?? tabs[0];
  } catch {
    /* ignore */
  }
  if (location.hash === "#ghost-studio") initial = tabs[1];
  selectTab(initial);
}

// ---- models ----
let models: Model[] = [];
const modelOf = (p: Prefix): Model | undefined => models.find((m) => m.id === $<HTMLSelectElement>(`${p}-model`).value);

function modelInfo(m: Model): (string | HTMLElement)[] {
  const ch = m.channels === 1 ? t("model.mono") : m.channels === 2 ? t("model.stereo") : t("model.channels", { n: m.channels });
  const facts = [
    m.sampleRate ? t("model.kHz", { rate: fmtNumber(m.sampleRate / 1000) }) : "",
    m.channels ? ch : "",
    m.maxDurationSeconds ? t("model.upTo", { seconds: fmtNumber(m.maxDurationSeconds) }) : "",
    m.device ? t("model.on", { device: m.device }) : "",
  ].filter(Boolean);
  // (A capability this page has no words for, from a newer server, gets no chip.)
  const chips = m.capabilities
    .map((c) => `cap.${c}`)
    .filter((key): key is Key => key !== `cap.${Capability.UNSPECIFIED}` && has(key))
    .map((key) => h("span", { className: "chip", text: t(key) }));
  return [facts.join(" · "), ...chips];
}

function showModel(p: Prefix): void {
  const m = modelOf(p);
  const info = $(`${p}-model-info`);
  const dur = $<HTMLInputElement>(`${p}-duration`);
  if (m) {
    info.replaceChildren(...modelInfo(m));
    if (m.maxDurationSeconds) dur.max = String(m.maxDurationSeconds);
    else dur.removeAttribute("max");
  } else {
    info.textContent = "";
    if (limits.maxDurationSeconds) dur.max = String(limits.maxDurationSeconds);
  }
  if (p === "cover") showCoverModes();
}

function fill(p: Prefix, list: Model[]): void {
  const select = $<HTMLSelectElement>(`${p}-model`);
  const previous = select.value;
  select.replaceChildren(...list.map((m) => new Option(m.id, m.id)));
  if (list.some((m) => m.id === previous)) select.value = previous;
  select.disabled = list.length === 0;
  showModel(p);
}

async function loadModels(): Promise<void> {
  clearError($("gen-model"));
  clearError($("cover-model"));
  try {
    const listed = await api.listModels({});
    models = listed.models;
    const l = listed.limits;
    if (l) {
      // A field the server leaves unset (an older server) keeps its default.
      if (l.maxPromptChars) limits.maxPromptChars = l.maxPromptChars;
      if (l.maxSongBytes) limits.maxSongBytes = l.maxSongBytes;
      if (l.maxTemperature) limits.maxTemperature = l.maxTemperature;
      if (l.maxGuidanceScale) limits.maxGuidanceScale = l.maxGuidanceScale;
      if (l.maxSongSeconds) limits.maxSongSeconds = l.maxSongSeconds;
      if (l.maxDurationSeconds) limits.maxDurationSeconds = l.maxDurationSeconds;
      showLimits();
    }
    clearError(tokenInput);
    $("token-field").classList.remove("attention");
  } catch (e) {
    const f = fault(e);
    models = [];
    if (f.kind === "auth") tokenProblem();
    for (const p of ["gen", "cover"] as const) {
      $<HTMLSelectElement>(`${p}-model`).replaceChildren();
      $(`${p}-model-info`).textContent = f.kind === "auth" ? t("model.needToken") : "";
      if (f.kind !== "auth") showError($(`${p}-model`), t("err.models", { message: f.message }));
    }
    return;
  }
  const text = models.filter((m) => m.capabilities.includes(Capability.TEXT));
  fill("gen", text.length ? text : models);
  const covers = models.filter((m) => m.capabilities.includes(Capability.COVER));
  fill("cover", covers);
  $<HTMLButtonElement>("cover-submit").disabled = covers.length === 0 || views.cover.busy || !!coolingDown.cover;
  if (!covers.length) showError($("cover-model"), t("cover.noModel"));
}
for (const p of ["gen", "cover"] as const) $(`${p}-model`).addEventListener("change", () => showModel(p));

// ---- cover modes: offered where the model has several; clip fields for a continuation ----
function coverModes(m: Model | undefined): CoverMode[] {
  if (!m) return [];
  const modes: CoverMode[] = [];
  if (m.capabilities.includes(Capability.COVER_MELODY)) modes.push(CoverMode.MELODY);
  if (m.capabilities.includes(Capability.COVER_CONTINUATION)) modes.push(CoverMode.CONTINUATION);
  return modes;
}
const modeSelect = $<HTMLSelectElement>("cover-mode");
function showCoverModes(): void {
  const modes = coverModes(modelOf("cover"));
  for (const o of modeSelect.options) o.hidden = o.disabled = !modes.includes(Number(o.value));
  if (modes.length && !modes.includes(Number(modeSelect.value))) modeSelect.value = String(modes[0]);
  const continuation = modes.length > 0 && Number(modeSelect.value) === CoverMode.CONTINUATION;
  $("cover-mode-field").hidden = modes.length < 2;
  $("cover-clips").hidden = !continuation;
  $("cover-mode-row").hidden = modes.length < 2 && !continuation;
}
modeSelect.addEventListener("change", showCoverModes);

// ---- reading the forms ----
class Invalid extends Error {
  constructor(
    readonly control: HTMLElement,
    message: string,
  ) {
    super(message);
  }
}

function num(id: string, opts: { min?: number; max?: number; int?: boolean; message?: string } = {}): number | undefined {
  const input = $<HTMLInputElement>(id);
  const raw = input.value.trim();
  if (raw === "" && input.validity.badInput === false) return undefined;
  const v = Number(raw.replace(",", "."));
  const bad =
    raw === "" ||
    !Number.isFinite(v) ||
    (opts.int && !Number.isInteger(v)) ||
    (opts.min !== undefined && v < opts.min) ||
    (opts.max !== undefined && v > opts.max);
  if (bad) throw new Invalid(input, opts.message ?? t("err.number"));
  return v;
}

function sampling(p: Prefix): Sampling | undefined {
  const seedInput = $<HTMLInputElement>(`${p}-seed`);
  const seedText = seedInput.value.trim();
  let seed: bigint | undefined;
  if (seedText) {
    if (!/^\d+$/.test(seedText) || BigInt(seedText) >= 2n ** 64n) throw new Invalid(seedInput, t("err.seed"));
    seed = BigInt(seedText);
  }
  const openAdvanced = (fn: () => number | undefined) => {
    try {
      return fn();
    } catch (e) {
      $<HTMLDetailsElement>(`${p}-advanced`).open = true;
      throw e;
    }
  };
  const topK = openAdvanced(() => num(`${p}-top-k`, { min: 0, max: MAX_TOP_K, int: true, message: t("err.topK") }));
  const topP = openAdvanced(() => num(`${p}-top-p`, { min: 0, max: 1 }));
  const temperature = openAdvanced(() => num(`${p}-temperature`, { min: 0, max: limits.maxTemperature }));
  const guidanceScale = openAdvanced(() => num(`${p}-guidance`, { min: 0, max: limits.maxGuidanceScale }));
  if ([seed, topK, topP, temperature, guidanceScale].every((v) => v === undefined)) return undefined;
  return create(SamplingSchema, { seed, topK, topP, temperature, guidanceScale });
}

function prompt(p: Prefix): string {
  const el = $<HTMLTextAreaElement>(`${p}-prompt`);
  const v = el.value.trim();
  if (!v) throw new Invalid(el, t("err.prompt.empty"));
  return v;
}

function duration(p: Prefix): number {
  const m = modelOf(p);
  // The model's own limit; with no model chosen, the longest any model here makes.
  const max = m?.maxDurationSeconds || limits.maxDurationSeconds || 1e9;
  const cover = p === "cover";
  const message = cover
    ? t("err.duration.cover", { max: fmtNumber(max) })
    : t("err.duration.range", { min: fmtNumber(0.1), max: fmtNumber(max) });
  const v = num(`${p}-duration`, { min: 0, max, message });
  if (v === undefined) return 0;
  if (!cover && v <= 0) throw new Invalid($(`${p}-duration`), message);
  return v;
}

function requestId(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function liveFor(p: Prefix): LivePlayer | null {
  const m = modelOf(p);
  if (!$<HTMLInputElement>(`${p}-live`).checked || (m && !m.capabilities.includes(Capability.STREAMING_AUDIO))) return null;
  try {
    return new LivePlayer(); // inside the click, so the browser lets it play
  } catch {
    return null;
  }
}

// ---- errors from the service, next to the control they are about ----
const FIELD_CONTROLS: Record<string, string> = {
  prompt: "prompt",
  model: "model",
  duration: "duration",
  duration_seconds: "duration",
  seed: "seed",
  top_k: "top-k",
  top_p: "top-p",
  temperature: "temperature",
  guidance_scale: "guidance",
  audio_format: "format",
  sample_format: "format",
  song: "file",
  mode: "mode",
  clip_start: "clip-start",
  clip_start_seconds: "clip-start",
  clip_end: "clip-end",
  clip_end_seconds: "clip-end",
};

const busyTimers: Partial<Record<Prefix, number>> = {};
/** While the queue-full countdown runs, the form's submit button stays disabled. */
const coolingDown: Partial<Record<Prefix, boolean>> = {};

/**
 * "The queue is full; retry in N s", counting down. The error line is an alert: it is said
 * once (with the first number); the number that then ticks is hidden from screen readers.
 */
function busyCountdown(p: Prefix, seconds: number): void {
  const submit = $<HTMLButtonElement>(`${p}-submit`);
  clearTimeout(busyTimers[p]);
  let left = seconds;
  const [before, after = ""] = t("err.busy", { seconds: "\u0000" }).split("\u0000");
  const count = h("span", { text: String(left) });
  const spoken = h("span", { className: "visually-hidden", text: t("err.busy", { seconds: left }) });
  const shown = h("span", { attrs: { "aria-hidden": "true" } }, before, count, after);
  showError(submit, [spoken, shown]);
  coolingDown[p] = true;
  setBusy(p, views[p].busy);
  const tick = () => {
    if (--left > 0) {
      count.textContent = String(left);
      busyTimers[p] = window.setTimeout(tick, 1000);
      return;
    }
    // Over: said once more, since the button works again.
    spoken.textContent = shown.textContent = t("err.busyNow");
    coolingDown[p] = false;
    setBusy(p, views[p].busy);
  };
  busyTimers[p] = window.setTimeout(tick, 1000);
}

function refused(p: Prefix, f: Fault): void {
  const submit = $<HTMLButtonElement>(`${p}-submit`);
  if (f.kind === "auth") {
    tokenProblem();
    tokenInput.focus();
    return;
  }
  if (f.kind === "field") {
    const name = (f.field ?? "").replace(/^sampling\./, "");
    const suffix = FIELD_CONTROLS[name];
    const control = suffix ? document.getElementById(`${p}-${suffix}`) : null;
    if (control && !control.closest("[hidden]")) {
      if (control.closest("details")) (control.closest("details") as HTMLDetailsElement).open = true;
      const label = document.querySelector(`label[for="${control.id}"]`)?.textContent?.trim();
      const rest = f.message.replace(/^invalid [a-z_.]+:\s*/i, "");
      showError(control, label ? `${label}: ${rest}` : f.message, true);
      if (suffix === "file") $("cover-drop").classList.add("invalid");
      return;
    }
    showError(submit, f.message);
    return;
  }
  if (f.kind === "busy") {
    busyCountdown(p, f.retryAfter ?? 5);
    return;
  }
  if (p === "cover" && f.code === Code.FailedPrecondition) {
    // A model that cannot cover, or not in the mode asked: said at the mode, else the model.
    const mode = $("cover-mode");
    showError(mode.closest("[hidden]") ? $("cover-model") : mode, f.message, true);
    return;
  }
  const text =
    f.kind === "network"
      ? `${t("err.network")} (${f.message})`
      : f.kind === "unavailable"
        ? t("err.unavailable", { message: f.message })
        : f.kind === "client"
          ? t("err.client", { message: f.message })
          : f.message;
  showError(submit, text);
}

function clearFormErrors(p: Prefix): void {
  clearTimeout(busyTimers[p]);
  coolingDown[p] = false;
  clearErrors($(`${p}-form`));
  $("cover-drop").classList.remove("invalid");
}

// ---- the job views ----
const views: Record<Prefix, JobView> = {} as Record<Prefix, JobView>;
for (const p of ["gen", "cover"] as const) {
  views[p] = new JobView(p, p, {
    created: () => void history.refresh(),
    progress: (id, percent) => history.progress(id, percent),
    ended: (id, state) => {
      setBusy(p, false);
      history.finished(id, state);
    },
    refused: (f) => {
      setBusy(p, false);
      refused(p, f);
    },
    unauthenticated: tokenProblem,
  });
}

function setBusy(p: Prefix, busy: boolean): void {
  const submit = $<HTMLButtonElement>(`${p}-submit`);
  submit.disabled =
    busy || !!coolingDown[p] || (p === "cover" && models.length > 0 && !models.some((m) => m.capabilities.includes(Capability.COVER)));
  submit.classList.toggle("working", busy);
}

// ---- Generator ----
/** What an unexpected error at submit says (no English from the browser when avoidable). */
function unexpected(err: unknown): string {
  return t("err.client", { message: err instanceof Error ? err.message : String(err) });
}

$("gen-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (views.gen.busy || coolingDown.gen) return;
  clearFormErrors("gen");
  if (!applyToken()) {
    tokenInput.focus();
    return;
  }
  try {
    const req = create(GenerateRequestSchema, {
      prompt: prompt("gen"),
      model: $<HTMLSelectElement>("gen-model").value,
      durationSeconds: duration("gen"),
      sampling: sampling("gen"),
      audioFormat: Number($<HTMLSelectElement>("gen-format").value),
      requestId: requestId(),
    });
    const live = liveFor("gen");
    setBusy("gen", true);
    views.gen.start(req.prompt, (signal) => api.generate(req, { signal }), live);
  } catch (err) {
    if (err instanceof Invalid) showError(err.control, err.message, true);
    else showError($("gen-submit"), unexpected(err));
  }
});

// ---- Ghost Studio ----
const fileInput = $<HTMLInputElement>("cover-file");
const drop = $("cover-drop");
let song: File | null = null;
let songPeaks: Float32Array | null = null;
/** The chosen song's length once this browser decoded it. */
let songSeconds: number | null = null;
let songInfo = "";

/** Why the chosen song is longer than the server takes (max_song_seconds), or null. */
function songTooLong(): string | null {
  const max = limits.maxSongSeconds;
  // (A little slack: decoders disagree on a file's length by a few milliseconds.)
  if (!max || songSeconds === null || songSeconds <= max + 0.1) return null;
  return t("cover.file.tooLong", { duration: exactSeconds(Math.round(songSeconds * 10) / 10), limit: exactSeconds(max) });
}

function fileProblem(message: string): void {
  showError(fileInput, message);
  drop.classList.add("invalid");
}

async function chooseSong(file: File | null): Promise<void> {
  clearError(fileInput);
  drop.classList.remove("invalid");
  song = file;
  songPeaks = null;
  songSeconds = null;
  const info = $("cover-file-info");
  if (!file) {
    info.hidden = true;
    drop.classList.remove("has-file");
    return;
  }
  drop.classList.add("has-file");
  info.hidden = false;
  songInfo = t("cover.file.chosen", { name: file.name, size: bytes(file.size) });
  info.textContent = songInfo;
  if (file.size > maxSongBytes()) {
    fileProblem(t("cover.file.tooBig", { size: bytes(file.size), limit: bytes(maxSongBytes()) }));
    return;
  }
  let data: ArrayBuffer;
  try {
    data = await file.arrayBuffer();
  } catch {
    // (Moved or deleted since it was chosen, or not readable at all.)
    if (song === file) fileProblem(t("cover.file.unreadable"));
    return;
  }
  const decoded = await peaksOf(data);
  if (song !== file) return;
  if (decoded) {
    songPeaks = decoded.peaks;
    songSeconds = decoded.duration;
    songInfo = t("cover.file.length", { name: file.name, size: bytes(file.size), duration: exactSeconds(Math.round(decoded.duration * 10) / 10) });
    info.textContent = songInfo;
    const long = songTooLong();
    if (long) fileProblem(long);
  } else {
    info.textContent = `${songInfo} — ${t("cover.undecodable")}`;
  }
}
fileInput.addEventListener("change", () => void chooseSong(fileInput.files?.[0] ?? null));
drop.addEventListener("click", (e) => {
  if (e.target === drop || (e.target as HTMLElement).closest(".drop-icon, .drop-hint, .drop-file")) fileInput.click();
});
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
}
for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = (e as DragEvent).dataTransfer?.files?.[0];
  if (!file) return;
  try {
    fileInput.files = (e as DragEvent).dataTransfer!.files;
  } catch {
    /* older browsers: the file is kept in `song` */
  }
  void chooseSong(file);
});
// A file dropped anywhere else would make the browser leave the page to open it.
for (const ev of ["dragover", "drop"] as const) {
  document.addEventListener(ev, (e) => {
    const dt = e.dataTransfer;
    if (!dt || !Array.from(dt.types).includes("Files") || drop.contains(e.target as Node)) return;
    e.preventDefault();
    dt.dropEffect = "none";
  });
}

$("cover-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (views.cover.busy || coolingDown.cover) return;
  clearFormErrors("cover");
  if (!applyToken()) {
    tokenInput.focus();
    return;
  }
  let live: LivePlayer | null = null;
  try {
    if (!song) throw new Invalid(fileInput, t("cover.file.missing"));
    if (song.size > maxSongBytes()) throw new Invalid(fileInput, t("cover.file.tooBig", { size: bytes(song.size), limit: bytes(maxSongBytes()) }));
    const long = songTooLong();
    if (long) throw new Invalid(fileInput, long);
    const text = prompt("cover");
    const modes = coverModes(modelOf("cover"));
    const mode = modes.length ? (Number(modeSelect.value) as CoverMode) : CoverMode.UNSPECIFIED;
    const continuation = mode === CoverMode.CONTINUATION;
    const clipStart = continuation ? num("cover-clip-start", { min: 0, message: t("err.clip") }) : undefined;
    const clipEnd = continuation ? num("cover-clip-end", { min: 0, message: t("err.clip") }) : undefined;
    const fields = {
      prompt: text,
      model: $<HTMLSelectElement>("cover-model").value,
      durationSeconds: duration("cover"),
      sampling: sampling("cover"),
      audioFormat: Number($<HTMLSelectElement>("cover-format").value),
      requestId: requestId(),
      mode,
      clipStartSeconds: clipStart,
      clipEndSeconds: clipEnd,
    };
    live = liveFor("cover"); // before any await, while the click still counts
    setBusy("cover", true);
    const file = song;
    let bytesOf: Uint8Array;
    try {
      bytesOf = new Uint8Array(await file.arrayBuffer());
    } catch {
      throw new Invalid(fileInput, t("cover.file.unreadable"));
    }
    const req = create(CoverRequestSchema, { ...fields, song: bytesOf });
    void views.cover.setOriginal(file, songPeaks, songInfo);
    views.cover.start(text, (signal) => api.cover(req, { signal }), live);
  } catch (err) {
    live?.stop();
    setBusy("cover", false);
    if (err instanceof Invalid) {
      showError(err.control, err.message, err.control !== fileInput);
      if (err.control === fileInput) {
        drop.classList.add("invalid");
        drop.scrollIntoView({ block: "center" });
      }
    } else showError($("cover-submit"), unexpected(err));
  }
});

// Editing a field clears its error.
for (const p of ["gen", "cover"] as const) {
  $(`${p}-form`).addEventListener("input", (e) => {
    const el = e.target as HTMLElement;
    if (el.id && el.getAttribute("aria-invalid")) clearError(el);
  });
}

// ---- start ----

/**
 * Picks up the jobs this tab followed before a reload. One started with another token stays
 * saved but is not followed (Watch would answer NOT_FOUND): it is picked up once that token
 * is back.
 */
function resumeSaved(): void {
  for (const p of ["gen", "cover"] as const) {
    if (views[p].busy) continue;
    const saved = loadSaved(`son1k.job.${p}`);
    if (!saved || saved.done || saved.token !== tokenHash()) continue;
    const box = $<HTMLTextAreaElement>(`${p}-prompt`);
    if (!box.value) box.value = saved.prompt;
    setBusy(p, true);
    views[p].resume(saved);
    if (p === "cover" && !views.gen.busy) selectTab(tabs[1]);
  }
}

if (!validToken(tokenInput.value.trim())) showError(tokenInput, t("token.invalid"));
void loadModels();
void history.refresh();
resumeSaved();

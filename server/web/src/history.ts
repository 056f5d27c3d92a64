// The caller's jobs from ListGenerations, newest first, each with its state; a finished one
// plays again (its audio fetched on demand). While a listed job is not finished, the list
// is refreshed every few seconds, so no finished job keeps reading "running".

import { $, FORMATS, h, slug } from "./dom";
import { api, fault } from "./client";
import { fetchAudio } from "./job";
import { Player } from "./view";
import { bytes, exactSeconds, fmtTime, t, type Key } from "./i18n";
import { GenerationKind, GenerationState, type Generation } from "./gen/son1k/v1/son1k_pb";

const PAGE = 20;
const POLL_MS = 3000;

const TERMINAL = new Set([GenerationState.COMPLETED, GenerationState.FAILED, GenerationState.CANCELLED]);
const STATE_NAMES: Record<number, string> = {
  [GenerationState.UNSPECIFIED]: "unknown",
  [GenerationState.QUEUED]: "queued",
  [GenerationState.RUNNING]: "running",
  [GenerationState.COMPLETED]: "completed",
  [GenerationState.FAILED]: "failed",
  [GenerationState.CANCELLED]: "cancelled",
};

interface Row {
  li: HTMLLIElement;
  badge: HTMLElement;
  bar: HTMLElement;
  meta: HTMLElement;
  gen: Generation;
  player?: Player;
  opened?: HTMLElement;
}

export class History {
  private readonly list = $<HTMLOListElement>("history-list");
  private readonly empty = $("history-empty");
  private readonly more = $<HTMLButtonElement>("history-more");
  private readonly err = $("history-err");
  private rows = new Map<string, Row>();
  private next = "";
  private timer: number | undefined;
  private loading: Promise<void> | null = null;
  private again = false;
  /** Jobs this page saw end, and how: they never read "running" again. */
  private ended = new Map<string, GenerationState>();
  /** Live percent of jobs this page follows. */
  private percent = new Map<string, number>();
  onUnauthenticated: () => void = () => {};

  constructor() {
    $("history-refresh").addEventListener("click", () => void this.refresh());
    this.more.addEventListener("click", () => void this.loadMore());
  }

  /** Loads the first page again (coalescing calls made while one is under way). */
  refresh(): Promise<void> {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      do {
        this.again = false;
        await this.load();
      } while (this.again);
    })().finally(() => {
      this.loading = null;
    });
    return this.loading;
  }

  private async load(): Promise<void> {
    clearTimeout(this.timer);
    try {
      const res = await api.listGenerations({ pageSize: PAGE });
      this.err.hidden = true;
      this.render(res.generations, false);
      this.next = res.nextPageToken;
    } catch (e) {
      const f = fault(e);
      if (f.kind === "auth") {
        this.onUnauthenticated();
        this.clear();
        this.empty.textContent = t("history.locked");
        this.empty.hidden = false;
      } else {
        this.err.textContent = t("err.history", { message: f.message });
        this.err.hidden = false;
      }
    }
    this.more.hidden = !this.next;
    this.schedule();
  }

  private async loadMore(): Promise<void> {
    if (!this.next) return;
    try {
      const res = await api.listGenerations({ pageSize: PAGE, pageToken: this.next });
      this.render(res.generations, true);
      this.next = res.nextPageToken;
    } catch (e) {
      this.err.textContent = t("err.history", { message: fault(e).message });
      this.err.hidden = false;
    }
    this.more.hidden = !this.next;
  }

  /** While something listed is unfinished, look again in a few seconds. */
  private schedule(): void {
    clearTimeout(this.timer);
    const pending = [...this.rows.values()].some((r) => !TERMINAL.has(this.stateOf(r.gen)));
    if (pending) this.timer = window.setTimeout(() => void this.refresh(), POLL_MS);
  }

  /** A job this page follows moved on. */
  progress(id: string, percent: number): void {
    this.percent.set(id, percent);
    const row = this.rows.get(id);
    if (row && !TERMINAL.has(this.stateOf(row.gen))) this.paint(row);
  }

  /** A job this page follows ended; the list is loaded again. */
  finished(id: string, state: "completed" | "failed" | "cancelled" | null): void {
    if (state) {
      this.ended.set(
        id,
        { completed: GenerationState.COMPLETED, failed: GenerationState.FAILED, cancelled: GenerationState.CANCELLED }[state],
      );
    }
    const row = this.rows.get(id);
    if (row) this.paint(row);
    void this.refresh();
  }

  clear(): void {
    this.rows.clear();
    this.list.replaceChildren();
    this.next = "";
  }

  private stateOf(g: Generation): GenerationState {
    if (TERMINAL.has(g.state)) return g.state;
    return this.ended.get(g.generationId) ?? g.state;
  }

  private render(gens: Generation[], append: boolean): void {
    const keep = new Map(this.rows);
    if (!append) this.rows = new Map();
    const items: HTMLLIElement[] = [];
    for (const g of gens) {
      let row = keep.get(g.generationId);
      if (row) row.gen = g;
      else row = this.build(g);
      this.rows.set(g.generationId, row);
      this.paint(row);
      items.push(row.li);
    }
    if (append) this.list.append(...items);
    else this.list.replaceChildren(...items);
    this.empty.textContent = t("history.empty");
    this.empty.hidden = this.rows.size > 0;
  }

  private build(g: Generation): Row {
    const badge = h("span", { className: "badge" });
    const kind = h("span", {
      className: `h-kind ${g.kind === GenerationKind.COVER ? "cover" : "gen"}`,
      text: t(g.kind === GenerationKind.COVER ? "history.cover" : "history.generation"),
    });
    const prompt = h("p", { className: "h-prompt", text: g.prompt || t("history.untitled") });
    const meta = h("p", { className: "h-meta" });
    const bar = h("div", { className: "h-bar" }, h("div"));
    const li = h("li", { className: "h-item", attrs: { "data-id": g.generationId } },
      h("div", { className: "h-top" }, kind, badge), prompt, meta, bar);
    const row: Row = { li, badge, bar, meta, gen: g };
    return row;
  }

  private paint(row: Row): void {
    const g = row.gen;
    const state = this.stateOf(g);
    const name = STATE_NAMES[state] ?? "unknown";
    row.li.dataset.state = name;
    const pct = Math.floor(Math.max(this.percent.get(g.generationId) ?? 0, g.progress?.percent ?? 0));
    row.badge.className = `badge ${name}`;
    row.badge.textContent = state === GenerationState.RUNNING ? t("state.2p", { percent: pct }) : t(`state.${state}` as Key);
    row.bar.hidden = TERMINAL.has(state);
    (row.bar.firstElementChild as HTMLElement).style.width = `${state === GenerationState.QUEUED ? 0 : pct}%`;
    const bits: string[] = [];
    if (g.result?.durationSeconds) bits.push(exactSeconds(g.result.durationSeconds));
    if (g.model) bits.push(g.model);
    if (g.createdUnixMs) bits.push(fmtTime(Number(g.createdUnixMs)));
    row.meta.textContent = bits.join(" · ");
    if (state === GenerationState.COMPLETED && !row.opened) this.addPlay(row);
    if (state === GenerationState.FAILED && g.error?.message && !row.li.querySelector(".h-error")) {
      row.li.append(h("p", { className: "h-error", text: g.error.message }));
    }
  }

  private addPlay(row: Row): void {
    const id = row.gen.generationId;
    const label = row.gen.prompt || t("history.untitled");
    const button = h("button", { className: "ghost small h-play", text: t("history.play"), attrs: { type: "button", "aria-label": `${t("history.play")}: ${label}` } });
    const holder = h("div", { className: "h-player" }, button);
    row.opened = holder;
    row.li.append(holder);
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = t("history.loading");
      try {
        const { file, format: no } = await fetchAudio(id);
        const format = FORMATS[no] ?? FORMATS[0];
        const player = new Player(`h-${id}`);
        player.caption(label);
        const link = h("a", { className: "h-download", text: t("job.download", { format: format.name, size: bytes(file.length) }), attrs: { download: `${slug(row.gen.prompt)}.${format.ext}` } });
        holder.replaceChildren(player.el, link);
        row.player = player;
        const url = await player.load(new Blob([file as BlobPart], { type: format.mime }));
        link.href = url;
        player.audio.play().catch(() => {});
      } catch (e) {
        button.disabled = false;
        button.textContent = t("history.play");
        holder.append(h("p", { className: "err", text: t("job.audioFailed", { message: fault(e).message }), attrs: { role: "alert" } }));
      }
    });
  }
}

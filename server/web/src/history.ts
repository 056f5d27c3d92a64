// The caller's jobs from ListGenerations, newest first, each with its state; a finished one
// plays again (its audio fetched on demand). While a listed job is not finished, the list
// is refreshed every few seconds, so no finished job keeps reading "running": the first page
// is merged into the rows shown (updated in place, new jobs on top), so pages loaded with
// "Show more" and the players open in them stay.

import { $, FORMATS, h, slug } from "./dom";
import { api, fault } from "./client";
import { fetchAudio } from "./job";
import { Player } from "./view";
import { bytes, exactSeconds, fmtTime, has, t } from "./i18n";
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
  /** The rows shown, in the list's order. */
  private rows = new Map<string, Row>();
  private next = "";
  /** Whether "Show more" loaded pages past the first (whose token then stays). */
  private extended = false;
  /** Bumped by clear(): an answer to a call made before is dropped. */
  private epoch = 0;
  /** The ids the last first page listed: the rows a refresh can update. */
  private firstPage = new Set<string>();
  private timer: number | undefined;
  /** Failed loads in a row: the next look waits longer. */
  private failures = 0;
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
    // A hidden tab does not poll; it looks again when it is shown.
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.timer === undefined && this.pending()) void this.refresh();
    });
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
    const epoch = this.epoch;
    try {
      const res = await api.listGenerations({ pageSize: PAGE });
      if (epoch !== this.epoch) return; // the token changed meanwhile; a new load follows
      this.failures = 0;
      this.err.hidden = true;
      this.merge(res.generations, res.nextPageToken);
    } catch (e) {
      if (epoch !== this.epoch) return;
      this.failures++;
      const f = fault(e);
      if (f.kind === "auth") {
        this.onUnauthenticated();
        this.clear();
        this.empty.textContent = t("history.locked");
        this.empty.hidden = false;
      } else {
        this.showError(t("err.history", { message: f.message }));
      }
    }
    this.more.hidden = !this.next;
    this.schedule();
  }

  private async loadMore(): Promise<void> {
    if (!this.next) return;
    const epoch = this.epoch;
    try {
      const res = await api.listGenerations({ pageSize: PAGE, pageToken: this.next });
      if (epoch !== this.epoch) return;
      this.append(res.generations);
      this.next = res.nextPageToken;
    } catch (e) {
      if (epoch !== this.epoch) return;
      this.showError(t("err.history", { message: fault(e).message }));
    }
    this.more.hidden = !this.next;
  }

  /** The error line, rewritten only when its text changes (it is an alert: each write is read out). */
  private showError(text: string): void {
    if (this.err.textContent !== text) this.err.textContent = text;
    this.err.hidden = false;
  }

  /** Whether something on the first page is unfinished. */
  private pending(): boolean {
    return [...this.firstPage].some((id) => {
      const r = this.rows.get(id);
      return r !== undefined && !TERMINAL.has(this.stateOf(r.gen));
    });
  }

  /** While something on the first page is unfinished and the tab is shown, look again in a
   * few seconds (longer after failures, up to 30 s). */
  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (document.hidden || !this.pending()) return;
    const wait = Math.min(POLL_MS * 2 ** this.failures, 30_000);
    this.timer = window.setTimeout(() => {
      this.timer = undefined;
      void this.refresh();
    }, wait);
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

  /** Empties the list (the token changed): its players and their files are released. */
  clear(): void {
    this.epoch++;
    for (const row of this.rows.values()) row.player?.dispose();
    this.rows.clear();
    this.firstPage.clear();
    this.list.replaceChildren();
    this.next = "";
    this.extended = false;
    this.more.hidden = true;
  }

  private remove(id: string, row: Row): void {
    row.player?.dispose();
    row.li.remove();
    this.rows.delete(id);
  }

  private stateOf(g: Generation): GenerationState {
    if (TERMINAL.has(g.state)) return g.state;
    return this.ended.get(g.generationId) ?? g.state;
  }

  /** The row of `g`, updated, or a new one. */
  private rowOf(g: Generation): Row {
    let row = this.rows.get(g.generationId);
    if (row) row.gen = g;
    else row = this.build(g);
    this.paint(row);
    return row;
  }

  /**
   * The first page, merged into the rows shown: listed rows are updated in place (their
   * players keep playing), new ones go on top, older rows (later pages) stay below. A row the
   * first page should have listed but did not is gone from the server and is removed.
   */
  private merge(gens: Generation[], next: string): void {
    const fresh = this.rows.size === 0; // first load, or after clear() (a new token)
    const listed = new Set(gens.map((g) => g.generationId));
    this.firstPage = listed;
    const oldest = gens.length ? gens[gens.length - 1].createdUnixMs : null;
    for (const [id, row] of [...this.rows]) {
      if (listed.has(id)) continue;
      // With no further page, the first page is everything; else it covers down to `oldest`.
      if (!next || (oldest !== null && row.gen.createdUnixMs > oldest)) this.remove(id, row);
    }
    const top = gens.map((g) => this.rowOf(g));
    const tail = [...this.rows.values()].filter((r) => !listed.has(r.gen.generationId));
    const order = [...top, ...tail];
    this.rows = new Map(order.map((r) => [r.gen.generationId, r]));
    this.place(order.map((r) => r.li));
    if (fresh || !this.extended) this.next = next;
    this.showEmpty();
  }

  /** A further page ("Show more"): new rows at the end; one already shown is updated. */
  private append(gens: Generation[]): void {
    for (const g of gens) {
      const known = this.rows.has(g.generationId);
      const row = this.rowOf(g);
      if (known) continue;
      this.rows.set(g.generationId, row);
      this.list.append(row.li);
    }
    this.extended = true;
    this.showEmpty();
  }

  /** Puts `items` in the list in this order, moving only those out of place. */
  private place(items: HTMLLIElement[]): void {
    items.forEach((li, i) => {
      const at = this.list.children[i] ?? null;
      if (at !== li) this.list.insertBefore(li, at);
    });
    while (this.list.children.length > items.length) this.list.lastElementChild!.remove();
  }

  private showEmpty(): void {
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
    // (A state this page does not know, from a newer server, reads "Unknown".)
    const key = `state.${state}`;
    row.badge.textContent = state === GenerationState.RUNNING ? t("state.2p", { percent: pct }) : t(has(key) ? key : "state.0");
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
      const hadFocus = document.activeElement === button;
      button.disabled = true;
      button.textContent = t("history.loading");
      let got: Awaited<ReturnType<typeof fetchAudio>>;
      try {
        got = await fetchAudio(id, undefined, Number(row.gen.result?.audioBytes ?? 0n));
      } catch (e) {
        button.disabled = false;
        button.textContent = t("history.play");
        const text = t("job.audioFailed", { message: fault(e).message });
        const err = holder.querySelector(".err");
        if (!err) holder.append(h("p", { className: "err", text, attrs: { role: "alert" } }));
        else if (err.textContent !== text) err.textContent = text;
        if (hadFocus && (document.activeElement === document.body || !document.activeElement)) button.focus();
        return;
      }
      if (this.rows.get(id) !== row) return; // the row went away meanwhile
      const format = FORMATS[got.format] ?? FORMATS[0];
      const blob = new Blob([got.file as BlobPart], { type: format.mime });
      const player = new Player(`h-${id}`);
      player.caption(label);
      const url = player.setFile(blob);
      const link = h("a", {
        className: "h-download",
        text: t("job.download", { format: format.name, size: bytes(got.file.length) }),
        attrs: { download: `${slug(row.gen.prompt)}.${format.ext}`, href: url },
      });
      const focusLost = hadFocus && (document.activeElement === button || document.activeElement === document.body || !document.activeElement);
      holder.replaceChildren(player.el, link);
      row.player = player;
      if (focusLost) {
        // The button the focus was on is gone: on to the player that took its place.
        player.audio.focus();
        if (document.activeElement !== player.audio) link.focus();
      }
      player.audio.play().catch(() => {});
      await player.drawPeaks(blob);
    });
  }
}

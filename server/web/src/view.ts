// The job card of a tab: progress, live preview, the finished file with its waveform, what
// the model understood; and the players (an <audio> with a waveform canvas) it shows.

import { $, FORMATS, clearErrors, h, instantiate, slug } from "./dom";
import { Job, type JobHooks, type LinkState, type Saved } from "./job";
import { LivePlayer } from "./live";
import { Waveform, peaksOf } from "./wave";
import { bytes, exactSeconds, fmtNumber, has, ordinal, seconds, t, translatePage, type Key } from "./i18n";
import { fault, type Fault } from "./client";
import { ErrorCode, Stage, type AudioChunk, type Completed, type Progress } from "./gen/son1k/v1/son1k_pb";

/** An <audio> with its waveform and a caption. */
export class Player {
  readonly el: HTMLElement;
  readonly audio: HTMLAudioElement;
  readonly canvas: HTMLCanvasElement;
  private readonly wave: Waveform;
  private readonly title: HTMLElement;
  private readonly sub: HTMLElement;
  private url = "";

  constructor(id: string) {
    const frag = instantiate("player-tpl", id);
    this.el = frag.querySelector("figure")!;
    this.el.id = id;
    this.audio = this.el.querySelector("audio")!;
    this.canvas = this.el.querySelector("canvas")!;
    this.audio.id = `${id}-audio`;
    this.canvas.id = `${id}-wave`;
    this.title = this.el.querySelector(".player-title")!;
    this.sub = this.el.querySelector(".player-sub")!;
    this.wave = new Waveform(this.canvas, this.audio);
  }

  caption(title: string, sub = ""): void {
    this.title.textContent = title;
    this.sub.textContent = sub;
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", t("job.waveform", { name: title }));
    this.audio.setAttribute("aria-label", title);
  }

  /** Plays `file` (from now on); returns its object URL. */
  setFile(file: Blob): string {
    this.clear();
    this.url = URL.createObjectURL(file);
    this.audio.src = this.url;
    return this.url;
  }

  /** Draws the waveform of `file` (given the file set last), decoding it unless `peaks` are known. */
  async drawPeaks(file: Blob, peaks?: Float32Array | null): Promise<void> {
    const url = this.url;
    let p = peaks ?? null;
    if (peaks === undefined) {
      try {
        p = (await peaksOf(await file.arrayBuffer()))?.peaks ?? null;
      } catch {
        p = null;
      }
    }
    if (url && this.url === url) this.wave.set(p); // not if another file (or none) took its place
  }

  /** Plays `file`; returns its object URL once its peaks are drawn. */
  async load(file: Blob, peaks?: Float32Array | null): Promise<string> {
    const url = this.setFile(file);
    await this.drawPeaks(file, peaks);
    return url;
  }

  clear(): void {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = "";
    if (this.audio.hasAttribute("src")) {
      this.audio.removeAttribute("src");
      this.audio.load();
    }
    this.wave.set(null);
  }

  /** Releases the file and the waveform's observers: the player is going away for good. */
  dispose(): void {
    this.clear();
    this.wave.dispose();
  }
}

export interface ViewEvents {
  /** The job got its id (it is in the history now). */
  created(id: string): void;
  progress(id: string, percent: number): void;
  /** The job ended (any way); the history should be refreshed. */
  ended(id: string, state: "completed" | "failed" | "cancelled" | null): void;
  /** The server refused the request: show it next to the control it names. */
  refused(f: Fault): void;
  /** A call was refused for the token. */
  unauthenticated(): void;
}

type Tone = "" | "ok" | "warn" | "bad";

/** How "what the model understood" is ordered; other keys follow alphabetically. */
const UNDERSTOOD_ORDER = ["genre", "mood", "tempo", "tempo_bpm", "bpm", "key", "scale", "meter", "progression", "instruments"];

export class JobView {
  private readonly card: HTMLElement;
  private readonly el: Record<string, HTMLElement> = {};
  private job: Job | null = null;
  private live: LivePlayer | null = null;
  readonly output: Player;
  original: Player | null = null;
  private prompt = "";
  private readonly storeKey: string;

  constructor(
    prefix: string,
    private readonly kind: "gen" | "cover",
    private readonly events: ViewEvents,
  ) {
    this.storeKey = `son1k.job.${prefix}`;
    this.card = $(`${prefix}-job`);
    const frag = instantiate("job-tpl", prefix);
    translatePage(frag);
    this.card.append(frag);
    for (const name of ["job-title", "job-prompt", "live-badge", "progress", "progress-fill", "pct", "stage", "eta", "queue", "status", "cancel", "retry", "result", "players", "download", "understood", "understood-title", "facts"]) {
      this.el[name] = $(`${prefix}-${name}`);
    }
    this.el["job-title"].textContent = t(kind === "gen" ? "job.title" : "job.coverTitle");
    this.output = new Player(`${prefix}-out`);
    if (kind === "cover") {
      this.original = new Player(`${prefix}-orig`);
      this.el.players.classList.add("compare");
      this.el.players.append(this.original.el);
    }
    // The card's title already says what the generator's player holds.
    this.output.el.classList.toggle("bare", kind === "gen");
    this.el.players.append(this.output.el);
    this.el.cancel.addEventListener("click", () => void this.cancel());
    this.el.retry.addEventListener("click", () => void this.retryAudio());
    this.output.audio.addEventListener("play", () => this.stopLive());
    this.original?.audio.addEventListener("play", () => {
      this.stopLive();
      this.output.audio.pause();
    });
    this.output.audio.addEventListener("play", () => this.original?.audio.pause());
  }

  private following = false;

  /** Whether a job is being followed (from its start until it ends or is given up). */
  get busy(): boolean {
    return this.following;
  }

  /** Starts following a new job from `open` (Generate or Cover). */
  start(prompt: string, open: Parameters<Job["run"]>[0], live: LivePlayer | null): void {
    this.job?.stop();
    this.reset(prompt);
    this.setLive(live);
    const ref: { job: Job | null } = { job: null };
    const job = new Job(this.storeKey, prompt, this.hooks(ref));
    ref.job = this.job = job;
    this.following = true;
    this.setStatus(t("job.waiting"));
    void job.run(open);
  }

  /** Picks up a job this page followed before it was reloaded. */
  resume(saved: Saved): void {
    this.reset(saved.prompt);
    if (this.original) {
      // The song itself stayed on the page that was reloaded.
      this.original.clear();
      this.original.el.hidden = true;
    }
    const ref: { job: Job | null } = { job: null };
    const job = Job.resume(this.storeKey, saved, this.hooks(ref));
    ref.job = this.job = job;
    this.following = true;
    this.setProgress(job.percent, undefined);
    this.cancelButton.disabled = false;
    this.card.dataset.id = saved.id;
    this.setStatus(t("job.resumed"));
    void job.run();
  }

  private get cancelButton(): HTMLButtonElement {
    return this.el.cancel as HTMLButtonElement;
  }

  /**
   * Hides `button` for good; if it had the focus, the focus goes to the download link when
   * the file is shown, else to the status line (so it is not lost to the page's top).
   */
  private hideButton(button: HTMLButtonElement): void {
    const had = document.activeElement === button;
    button.disabled = true;
    button.hidden = true;
    if (had) this.focusResult();
  }

  private focusResult(): void {
    const a = this.el.download as HTMLAnchorElement;
    if (!this.el.result.hidden && a.getAttribute("href")) a.focus();
    else this.el.status.focus();
  }

  private showRetry(on: boolean): void {
    const b = this.el.retry as HTMLButtonElement;
    if (on) {
      b.hidden = false;
      b.disabled = false;
    } else this.hideButton(b);
  }

  private reset(prompt: string): void {
    this.prompt = prompt;
    this.completedInfo = null;
    this.card.hidden = false;
    delete this.card.dataset.id;
    this.el["job-prompt"].textContent = prompt;
    this.el.result.hidden = true;
    (this.el.download as HTMLAnchorElement).removeAttribute("href");
    this.el.cancel.hidden = false;
    this.cancelButton.disabled = true;
    this.showRetry(false);
    this.el.queue.textContent = this.el.eta.textContent = this.el.stage.textContent = "";
    this.card.classList.remove("done", "failed");
    this.card.classList.add("running");
    this.setProgress(0, undefined);
    this.output.clear();
    this.el.understood.replaceChildren();
    this.el.facts.replaceChildren();
    this.stopLive();
  }

  private setLive(live: LivePlayer | null): void {
    this.live = live;
    if (live) live.onPlaying = (on) => this.showLive(on);
  }

  private showLive(on: boolean): void {
    this.el["live-badge"].hidden = !on;
  }

  private stopLive(): void {
    this.live?.stop();
    this.live = null;
    this.showLive(false);
  }

  private setStatus(text: string, tone: Tone = ""): void {
    this.linkShown = false;
    this.el.status.textContent = text;
    this.el.status.className = `status ${tone}`;
  }

  private setProgress(percent: number, p: Progress | undefined): void {
    const whole = Math.floor(percent);
    this.el["progress-fill"].style.width = `${percent}%`;
    const bar = this.el.progress;
    bar.setAttribute("aria-valuenow", String(whole));
    this.el.pct.textContent = t("job.percent", { percent: whole });
    if (p) {
      this.el.stage.textContent = t(`stage.${has(`stage.${p.stage}`) ? p.stage : 0}` as Key);
      this.el.eta.textContent = p.etaSeconds !== undefined && p.etaSeconds >= 1 && percent < 100 ? t("job.eta", { time: seconds(p.etaSeconds) }) : "";
      if (p.stage === Stage.QUEUED) this.showQueue(p.queuePosition);
      else this.el.queue.textContent = "";
    }
    if (percent >= 100) {
      this.el.eta.textContent = this.el.queue.textContent = "";
      this.el.stage.textContent = "";
    }
    bar.setAttribute("aria-valuetext", [this.el.pct.textContent, this.el.stage.textContent, this.el.eta.textContent, this.el.queue.textContent].filter(Boolean).join(" · "));
  }

  private showQueue(n: number): void {
    this.el.queue.textContent = n > 1 ? t("job.inLine", { ordinal: ordinal(n) }) : n === 1 ? t("job.next") : "";
  }

  private async cancel(): Promise<void> {
    const job = this.job;
    if (!job) return;
    const had = document.activeElement === this.cancelButton;
    this.cancelButton.disabled = true;
    this.setStatus(t("job.cancelling"), "warn");
    if (had) this.el.status.focus(); // a disabled button drops the focus
    try {
      await job.cancel();
    } catch (e) {
      if (this.job !== job) return;
      const f = fault(e);
      this.setStatus(t("err.other", { message: f.message }), "bad");
      this.cancelButton.disabled = job.terminal !== null;
    }
  }

  /** "Try again" after the file of a completed job could not be fetched. */
  private async retryAudio(): Promise<void> {
    const job = this.job;
    if (!job || job.terminal !== "completed") return;
    this.showRetry(false);
    await job.retryAudio();
  }

  private hooks(ref: { job: Job | null }): JobHooks {
    const view = this;
    const mine = () => ref.job !== null && ref.job === view.job;
    return {
      id(id) {
        if (!mine()) return;
        view.cancelButton.disabled = false;
        view.card.dataset.id = id;
        view.events.created(id);
      },
      accepted(queue, _model) {
        if (!mine()) return;
        view.showQueue(queue);
        if (view.el.status.textContent === t("job.waiting")) view.setStatus("");
      },
      progress(p: Progress | undefined, percent: number) {
        if (!mine()) return;
        view.setProgress(percent, p);
        if (view.job?.id) view.events.progress(view.job.id, percent);
      },
      chunk(c: AudioChunk) {
        if (!mine()) return;
        view.live?.push(c);
      },
      completed(c: Completed | null) {
        if (!mine()) return;
        // Nothing left to cancel while the file is fetched.
        view.hideButton(view.cancelButton);
        view.showCompleted(c);
      },
      audio(file, format) {
        if (!mine()) return;
        return view.showAudio(ref.job!, file, format).catch(() => {
          /* a file this browser cannot show: the download link is there anyway */
        });
      },
      audioFailed(f: Fault) {
        if (!mine()) return;
        view.stopLive();
        if (f.kind === "auth") view.events.unauthenticated();
        // The job did complete: not a failure, just a file still to fetch.
        view.setStatus(t("job.audioFailed", { message: f.message }), "warn");
        view.showRetry(true);
      },
      failed(f) {
        if (!mine()) return;
        view.card.classList.add("failed");
        const key = f.code === ErrorCode.INTERRUPTED ? "job.interrupted" : "job.failed";
        view.setStatus(t(key, { message: f.message || "?" }), "bad");
        view.stopLive();
      },
      cancelled() {
        if (!mine()) return;
        view.setStatus(t("job.cancelled"), "warn");
        view.stopLive();
      },
      link(state: LinkState, secs?: number, why?: Fault) {
        if (!mine()) return;
        view.showLink(state, secs, why);
      },
      error(f: Fault, started: boolean) {
        if (!mine()) return;
        view.stopLive();
        if (f.kind === "auth") view.events.unauthenticated();
        if (!started) {
          // Refused at submit: the form shows it next to the field; the card goes away.
          view.card.hidden = true;
          view.events.refused(f);
          return;
        }
        view.card.classList.add("failed");
        if (f.kind === "gone") view.setStatus(t("job.gone"), "bad");
        else if (f.kind === "auth") view.setStatus(t("err.unauthenticated"), "bad");
        else view.setStatus(t("job.lost", { message: f.message }), "bad");
      },
      ended() {
        if (!mine()) return;
        view.following = false;
        view.card.classList.remove("running");
        view.hideButton(view.cancelButton);
        const j = view.job!;
        if (j.id) view.events.ended(j.id, j.terminal);
      },
    };
  }

  /** Whether the status line shows a connection message (cleared once events flow again). */
  private linkShown = false;

  private showLink(state: LinkState, secs?: number, why?: Fault): void {
    if (state === "") {
      if (this.linkShown) this.setStatus("");
      this.linkShown = false;
      return;
    }
    const text = {
      reconnecting: () =>
        why?.kind === "unavailable"
          ? `${t("err.unavailable", { message: why.message })} ${t("job.retryIn", { seconds: secs ?? 1 })}`
          : t("job.reconnecting", { seconds: secs ?? 1 }),
      polling: () => t("job.polling"),
      // (UNAVAILABLE: the server answers, it is just not serving yet.)
      offline: () => (why?.kind === "unavailable" ? t("err.unavailable", { message: why.message }) : t("job.offline")),
      fetching: () => t("job.fetching"),
    }[state]();
    if (!text) return;
    this.setStatus(text, state === "fetching" ? "" : "warn");
    this.linkShown = true;
  }

  private completedInfo: Completed | null = null;

  private showCompleted(c: Completed | null): void {
    this.completedInfo = c;
    this.setProgress(100, undefined);
    this.card.classList.add("done");
    if (!c) return; // (GetGeneration said COMPLETED without the details)
    const rows: [string, string][] = [];
    const understood = Object.entries(c.parameters?.understood ?? {});
    const rank = (k: string) => {
      const i = UNDERSTOOD_ORDER.indexOf(k);
      return i < 0 ? UNDERSTOOD_ORDER.length : i;
    };
    understood.sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b));
    for (const [k, v] of understood) {
      const key = `understood.${k}`;
      const label = has(key) ? t(key as Key) : k.charAt(0).toUpperCase() + k.slice(1).replace(/_/g, " ");
      const value = k === "tempo_bpm" && Number.isFinite(Number(v)) ? `${fmtNumber(Number(v))} BPM` : v;
      rows.push([label, value]);
    }
    const ch = c.channels === 1 ? t("model.mono") : c.channels === 2 ? t("model.stereo") : t("model.channels", { n: c.channels });
    const facts: [string, string][] = [
      [t("job.duration"), exactSeconds(c.durationSeconds)],
      [t("job.seed"), c.seed.toString()],
      [t("job.model"), c.model],
      [t("job.audio"), `${FORMATS[c.format]?.name ?? "WAV"} · ${t("model.kHz", { rate: fmtNumber(c.sampleRate / 1000) })} · ${ch}`],
    ];
    const kv = ([k, v]: [string, string]) => h("div", { className: v.length > 18 ? "kv wide" : "kv" }, h("dt", { text: k }), h("dd", { text: v }));
    this.el.understood.replaceChildren(...rows.map(kv));
    this.el.understood.hidden = this.el["understood-title"].hidden = rows.length === 0;
    this.el.facts.replaceChildren(...facts.map(kv));
  }

  /**
   * Shows the finished file of `job`; resolves once its waveform is drawn. Everything that
   * touches the card happens while the card still shows `job` (a new job may start meanwhile).
   */
  private async showAudio(job: Job, file: Uint8Array, formatNo: number): Promise<void> {
    if (this.job !== job) return;
    const format = FORMATS[formatNo] ?? FORMATS[0];
    const blob = new Blob([file as BlobPart], { type: format.mime });
    const c = this.completedInfo;
    this.output.caption(this.kind === "cover" ? t("cover.cover") : t("job.title"), this.prompt);
    const a = this.el.download as HTMLAnchorElement;
    const url = this.output.setFile(blob);
    a.href = url;
    a.download = `${slug(this.prompt)}.${format.ext}`;
    a.textContent = t("job.download", { format: format.name, size: bytes(file.length) });
    this.el.result.hidden = false;
    this.setStatus(t("job.done"), "ok");
    if (document.activeElement === this.el.status) a.focus();
    // Hand over from the live preview to the file, at the same place.
    const at = this.live?.active ? this.live.position() : null;
    this.stopLive();
    if (at !== null && c && at < c.durationSeconds - 0.25) {
      const audio = this.output.audio;
      const go = () => {
        if (this.job !== job) return;
        audio.currentTime = at;
        audio.play().catch(() => {});
      };
      if (audio.readyState >= 1) go();
      else audio.addEventListener("loadedmetadata", go, { once: true });
    }
    // The last await: drawPeaks itself draws nothing once another file (another job's, or
    // none after a reset) took this one's place.
    await this.output.drawPeaks(blob);
  }

  /** The original song for a cover: plays beside the result. */
  async setOriginal(file: File | null, peaks: Float32Array | null, sub: string): Promise<void> {
    if (!this.original) return;
    if (!file) {
      this.original.clear();
      this.original.el.hidden = true;
      return;
    }
    this.original.el.hidden = false;
    this.original.caption(t("cover.original"), sub);
    await this.original.load(file, peaks);
  }

  clearErrors(): void {
    clearErrors(this.card);
  }
}

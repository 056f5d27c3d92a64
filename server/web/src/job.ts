// Following one job to its end: its events from Generate, Cover or Watch; re-attaching
// with Watch(after_sequence = last seen) with backoff when the stream breaks; polling
// GetGeneration when streaming keeps failing; the final file through GetAudio. Where the
// job is ({id, last sequence}) is kept in sessionStorage as events arrive: per tab, so a
// reloaded page carries on with its own job and another tab never picks it up.

import { Code, ConnectError, api, fault, retryable, tokenHash, type Fault } from "./client";
import { t } from "./i18n";
import { create } from "@bufbuild/protobuf";
import {
  AudioFormat,
  FailedSchema,
  GenerationState,
  type AudioChunk,
  type Completed,
  type Failed,
  type Generation,
  type GenerationEvent,
  type Progress,
} from "./gen/son1k/v1/son1k_pb";

/** What a page remembers of a job it follows. */
export interface Saved {
  id: string;
  /** The last sequence seen, in decimal (a uint64). */
  seq: string;
  done: boolean;
  prompt: string;
  percent: number;
  /** tokenHash() of the token the job was started with: another token cannot Watch it. */
  token: string;
}

/** This tab's record of the job under `key`, when it is well formed. */
export function loadSaved(key: string): Saved | null {
  try {
    const s = JSON.parse(sessionStorage.getItem(key) ?? "null") as Partial<Saved> | null;
    if (!s || typeof s !== "object" || typeof s.id !== "string" || !s.id) return null;
    if (typeof s.seq !== "string" || !/^\d{1,20}$/.test(s.seq) || BigInt(s.seq) >= 2n ** 64n) return null;
    const percent = typeof s.percent === "number" && Number.isFinite(s.percent) ? Math.min(100, Math.max(0, s.percent)) : 0;
    return {
      id: s.id,
      seq: s.seq,
      done: s.done === true,
      prompt: typeof s.prompt === "string" ? s.prompt : "",
      percent,
      token: typeof s.token === "string" ? s.token : "",
    };
  } catch {
    return null;
  }
}

export interface JobHooks {
  id(id: string): void;
  accepted(queuePosition: number, model: string): void;
  progress(p: Progress | undefined, percent: number): void;
  chunk(c: AudioChunk): void;
  /** The job completed (null: GetGeneration said so without the details). */
  completed(c: Completed | null): void;
  /** The finished file; the job ends once it is shown. */
  audio(file: Uint8Array, format: AudioFormat): Promise<void> | void;
  /** The job completed but its file could not be fetched (Job.retryAudio tries again). */
  audioFailed(f: Fault): void;
  failed(f: Failed): void;
  cancelled(reason: string): void;
  /**
   * How the connection is doing: "reconnecting" (in `seconds`), "polling", "offline",
   * "fetching", or "" when fine; `why`: the error that made it so.
   */
  link(state: LinkState, seconds?: number, why?: Fault): void;
  /** The job could not be started or followed (the page says why next to the right control). */
  error(f: Fault, started: boolean): void;
  /** Called once, however the following ended. */
  ended(): void;
}

export type LinkState = "" | "reconnecting" | "polling" | "offline" | "fetching";

type Opener = (signal: AbortSignal) => AsyncIterable<GenerationEvent>;

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
/** Failed stream attempts in a row (with nothing received) before polling instead. */
const STREAM_TRIES = BACKOFF_MS.length;
const POLL_MS = 1500;
/** Progress and audio events update the saved record at most this often. */
const PERSIST_MS = 1000;
/** No audio file is larger than this when Completed does not say its size. */
const MAX_AUDIO_BYTES = 2 ** 31;

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const abort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/**
 * A finished job's file from GetAudio, put together by offset. `expected`: its size from
 * Completed.audio_bytes (0 when unknown).
 */
export async function fetchAudio(id: string, signal?: AbortSignal, expected = 0): Promise<{ file: Uint8Array; format: AudioFormat }> {
  const pieces: { offset: number; data: Uint8Array }[] = [];
  let total = -1;
  let format = AudioFormat.UNSPECIFIED;
  for await (const p of api.getAudio({ generationId: id }, { signal })) {
    pieces.push({ offset: Number(p.offset), data: p.data });
    total = Number(p.totalBytes);
    if (p.format) format = p.format;
  }
  const file = assemble(pieces, total, expected);
  // (Aborted: a retry may well get it whole.)
  if (!file) throw new ConnectError(t("err.audioIncomplete"), Code.Aborted);
  return { file, format };
}

/**
 * The file from its pieces, or null when they do not cover it or `total` is not believable
 * (larger than `expected` from Completed.audio_bytes, or than MAX_AUDIO_BYTES when that is 0).
 * A piece past the end is skipped.
 */
function assemble(pieces: Iterable<{ offset: number; data: Uint8Array }>, total: number, expected: number): Uint8Array | null {
  if (!Number.isSafeInteger(total) || total < 0 || total > (expected > 0 ? expected : MAX_AUDIO_BYTES)) return null;
  const file = new Uint8Array(total);
  const covered: [number, number][] = [];
  for (const { offset, data } of pieces) {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= total) continue;
    const len = Math.min(data.length, total - offset);
    if (len <= 0) continue;
    file.set(data.subarray(0, len), offset);
    covered.push([offset, offset + len]);
  }
  covered.sort((a, b) => a[0] - b[0]);
  let end = 0;
  for (const [from, to] of covered) {
    if (from > end) return null;
    end = Math.max(end, to);
  }
  return end >= total ? file : null;
}

export class Job {
  id = "";
  lastSeq = 0n;
  percent = 0;
  terminal: "completed" | "failed" | "cancelled" | null = null;
  format: AudioFormat = AudioFormat.UNSPECIFIED;
  /** Completed.audio_bytes: the size the file must have (0 = not known). */
  private expectedBytes = 0;
  private pieces = new Map<number, Uint8Array>();
  private total = -1;
  private readonly ctrl = new AbortController();
  private stopped = false;
  private endedOnce = false;
  private persistedAt = 0;

  constructor(
    private readonly storeKey: string,
    readonly prompt: string,
    private readonly hooks: JobHooks,
    /** tokenHash() of the token the job runs under. */
    private readonly token = tokenHash(),
  ) {}

  /** A job this page followed before it was reloaded. */
  static resume(storeKey: string, saved: Saved, hooks: JobHooks): Job {
    const j = new Job(storeKey, saved.prompt, hooks, saved.token);
    j.id = saved.id;
    j.lastSeq = BigInt(saved.seq);
    j.percent = saved.percent || 0;
    return j;
  }

  get signal(): AbortSignal {
    return this.ctrl.signal;
  }

  /** Follows the job from `open` (Generate or Cover), or from Watch when the id is known. */
  async run(open?: Opener): Promise<void> {
    try {
      await this.follow(open ?? this.watchOpener());
    } finally {
      if (!this.endedOnce) {
        this.endedOnce = true;
        this.hooks.ended();
      }
    }
  }

  /** Stops following (the job itself goes on; see cancel). */
  stop(): void {
    this.stopped = true;
    this.ctrl.abort();
  }

  /** A completed job whose file could not be fetched: fetch it again. */
  async retryAudio(): Promise<void> {
    if (this.terminal !== "completed" || this.stopped) return;
    await this.finishAudio();
  }

  /** Asks the server to cancel; the stream then ends with Cancelled. */
  async cancel(): Promise<void> {
    if (!this.id || this.terminal) return;
    await api.cancelGeneration({ generationId: this.id });
  }

  private watchOpener(): Opener {
    return (signal) => api.watch({ generationId: this.id, afterSequence: this.lastSeq }, { signal });
  }

  /** Saves where the job is; `force` = now, else at most once every PERSIST_MS. */
  private persist(force = true): void {
    if (!this.id) return;
    const now = Date.now();
    if (!force && now - this.persistedAt < PERSIST_MS) return;
    this.persistedAt = now;
    const saved: Saved = {
      id: this.id,
      seq: this.lastSeq.toString(),
      done: this.terminal !== null,
      prompt: this.prompt,
      percent: this.percent,
      token: this.token,
    };
    try {
      sessionStorage.setItem(this.storeKey, JSON.stringify(saved));
    } catch {
      /* storage full or off: the job just cannot be picked up after a reload */
    }
  }

  /** The job is gone: drop its record (unless the token changed, which hides it instead). */
  private forget(): void {
    if (tokenHash() !== this.token) return;
    try {
      sessionStorage.removeItem(this.storeKey);
    } catch {
      /* ignore */
    }
  }

  private async follow(open: Opener): Promise<void> {
    let fails = 0;
    for (;;) {
      const before = this.lastSeq;
      let error: Fault | null = null;
      try {
        for await (const ev of open(this.ctrl.signal)) {
          this.onEvent(ev);
          if (this.stopped) return;
        }
      } catch (e) {
        error = fault(e);
      }
      if (this.stopped) return;
      if (this.terminal) {
        if (this.terminal === "completed") await this.finishAudio();
        return;
      }
      const started = this.id !== "";
      if (error?.kind === "client") {
        // Before anything came back, the request itself could not be sent: trying it again
        // would fail the same way, so the form says why. Later, it is a stream like any other.
        if (!started && this.lastSeq === 0n) {
          this.hooks.error(error, false);
          return;
        }
        error = { ...error, kind: "network" };
      }
      if (started && error?.kind === "field") {
        // Watch refused the sequence (say, the server renumbered the log after a crash):
        // the job's state still tells how it ends.
        await this.poll();
        return;
      }
      if (error && (!retryable(error) || (!started && error.kind === "busy"))) {
        // A refusal (bad field, token, queue full at submit) or a job that is gone.
        if (error.kind === "gone") this.forget();
        this.hooks.error(error, started);
        return;
      }
      if (this.lastSeq > before) fails = 0;
      if (fails >= STREAM_TRIES) {
        if (started) await this.poll();
        else this.hooks.error(error ?? { kind: "network", code: Code.Unknown, message: t("err.streamEnded") }, false);
        return;
      }
      const wait = error?.kind === "busy" ? (error.retryAfter ?? 5) * 1000 : BACKOFF_MS[fails];
      fails++;
      this.hooks.link("reconnecting", Math.ceil(wait / 1000), error ?? undefined);
      await sleep(wait, this.ctrl.signal);
      if (this.stopped) return;
      // Once the job has an id, Watch picks it up after the last event seen; before that the
      // same request (same request_id) is sent again, which the server maps to the same job.
      if (started) open = this.watchOpener();
    }
  }

  private onEvent(ev: GenerationEvent): void {
    if (ev.sequence !== 0n && ev.sequence <= this.lastSeq) return; // replayed after a re-attach
    if (ev.sequence > this.lastSeq) this.lastSeq = ev.sequence;
    if (ev.generationId && !this.id) {
      this.id = ev.generationId;
      this.hooks.id(this.id);
    }
    this.hooks.link("");
    const e = ev.event;
    switch (e.case) {
      case "accepted":
        this.hooks.accepted(e.value.queuePosition, e.value.model);
        break;
      case "progress":
        this.percent = Math.min(100, Math.max(this.percent, e.value.percent));
        this.hooks.progress(e.value, this.percent);
        break;
      case "audioChunk":
        // A preview the browser cannot play (an odd rate or layout) is skipped; it must not
        // end the stream that carries the job.
        try {
          this.hooks.chunk(e.value);
        } catch {
          /* the final file still comes */
        }
        break;
      case "audio":
        this.pieces.set(Number(e.value.offset), e.value.data);
        this.total = Number(e.value.totalBytes);
        if (e.value.format) this.format = e.value.format;
        break;
      case "completed":
        this.complete(e.value);
        break;
      case "failed":
        this.terminal = "failed";
        this.hooks.failed(e.value);
        break;
      case "cancelled":
        this.terminal = "cancelled";
        this.hooks.cancelled(e.value.reason);
        break;
    }
    // A preview chunk changes nothing worth saving; progress and file pieces are saved now
    // and then (a reload just replays a few more events).
    if (e.case !== "audioChunk") this.persist(e.case !== "progress" && e.case !== "audio");
  }

  private complete(c: Completed | null): void {
    this.terminal = "completed";
    if (c?.format) this.format = c.format;
    if (c && c.audioBytes > 0n) this.expectedBytes = Number(c.audioBytes);
    this.percent = 100;
    this.hooks.progress(undefined, 100);
    this.hooks.completed(c);
  }

  /** The polling fallback: GetGeneration every POLL_MS until the job ends. */
  private async poll(): Promise<void> {
    this.hooks.link("polling");
    // (Shown until the next answer; a job that is already over ends the message at once.)
    let fails = 0;
    while (!this.stopped) {
      let g: Generation | null = null;
      try {
        g = await api.getGeneration({ generationId: this.id }, { signal: this.ctrl.signal });
      } catch (e) {
        if (this.stopped) return;
        const f = fault(e);
        if (!retryable(f)) {
          if (f.kind === "gone") this.forget();
          this.hooks.error(f, true);
          return;
        }
        fails++;
        this.hooks.link("offline", undefined, f);
      }
      if (g) {
        if (fails) this.hooks.link("polling");
        fails = 0;
        this.apply(g);
        if (this.terminal) {
          this.persist();
          if (this.terminal === "completed") await this.finishAudio();
          return;
        }
      }
      await sleep(fails ? Math.min(POLL_MS * 2 ** fails, 10000) : POLL_MS, this.ctrl.signal);
    }
  }

  private apply(g: Generation): void {
    if (g.generationId && !this.id) this.id = g.generationId;
    switch (g.state) {
      case GenerationState.COMPLETED:
        this.complete(g.result ?? null);
        break;
      case GenerationState.FAILED:
        this.terminal = "failed";
        this.hooks.failed(g.error ?? create(FailedSchema));
        break;
      case GenerationState.CANCELLED:
        this.terminal = "cancelled";
        this.hooks.cancelled("");
        break;
      default:
        if (g.progress) {
          this.percent = Math.min(100, Math.max(this.percent, g.progress.percent));
          this.hooks.progress(g.progress, this.percent);
        }
        this.persist();
    }
  }

  /**
   * The final file: the pieces that came with the stream when all are here, else GetAudio.
   * Returns once the page shows it (or says it could not be fetched).
   */
  private async finishAudio(): Promise<void> {
    const inline = this.total >= 0 ? assemble(Array.from(this.pieces, ([offset, data]) => ({ offset, data })), this.total, this.expectedBytes) : null;
    this.pieces.clear();
    this.total = -1;
    if (inline) {
      await this.hooks.audio(inline, this.format);
      return;
    }
    this.hooks.link("fetching");
    for (let attempt = 0; ; attempt++) {
      let got: { file: Uint8Array; format: AudioFormat };
      try {
        got = await fetchAudio(this.id, this.ctrl.signal, this.expectedBytes);
      } catch (e) {
        if (this.stopped) return;
        const f = fault(e);
        if (!retryable(f) || attempt >= 4) {
          this.hooks.audioFailed(f);
          return;
        }
        await sleep(1000 * 2 ** attempt, this.ctrl.signal);
        if (this.stopped) return;
        continue;
      }
      if (this.stopped) return;
      this.hooks.link("");
      await this.hooks.audio(got.file, got.format || this.format);
      return;
    }
  }
}

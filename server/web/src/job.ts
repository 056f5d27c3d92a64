// Following one job to its end: its events from Generate, Cover or Watch; re-attaching
// with Watch(after_sequence = last seen) with backoff when the stream breaks; polling
// GetGeneration when streaming keeps failing; the final file through GetAudio. Where the
// job is ({id, last sequence}) is kept in localStorage as events arrive, so a reloaded page
// can carry on.

import { api, fault, retryable, type Fault } from "./client";
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
  seq: string;
  done: boolean;
  prompt: string;
  percent: number;
}

export function loadSaved(key: string): Saved | null {
  try {
    const s = JSON.parse(localStorage.getItem(key) ?? "null") as Saved | null;
    return s && typeof s.id === "string" && s.id && typeof s.seq === "string" ? s : null;
  } catch {
    return null;
  }
}

export interface JobHooks {
  id(id: string): void;
  accepted(queuePosition: number, model: string): void;
  progress(p: Progress | undefined, percent: number): void;
  chunk(c: AudioChunk): void;
  completed(c: Completed): void;
  audio(file: Uint8Array, format: AudioFormat): void;
  failed(f: Failed): void;
  cancelled(reason: string): void;
  /** How the connection is doing: "reconnecting", "polling", "offline", "fetching", or "" when fine. */
  link(state: LinkState, seconds?: number): void;
  /** The job could not be started or followed (the page says why next to the right control). */
  error(f: Fault, started: boolean): void;
  /** Called once, however the following ended. */
  ended(): void;
}

export type LinkState = "" | "reconnecting" | "polling" | "offline" | "fetching" | "audioFailed";

type Opener = (signal: AbortSignal) => AsyncIterable<GenerationEvent>;

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
/** Failed stream attempts in a row (with nothing received) before polling instead. */
const STREAM_TRIES = BACKOFF_MS.length;
const POLL_MS = 1500;

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** A finished job's file from GetAudio, put together by offset. */
export async function fetchAudio(id: string, signal?: AbortSignal): Promise<{ file: Uint8Array; format: AudioFormat }> {
  const pieces: { offset: number; data: Uint8Array }[] = [];
  let total = -1;
  let format = AudioFormat.UNSPECIFIED;
  for await (const p of api.getAudio({ generationId: id }, { signal })) {
    pieces.push({ offset: Number(p.offset), data: p.data });
    total = Number(p.totalBytes);
    if (p.format) format = p.format;
  }
  const file = assemble(pieces, total);
  if (!file) throw new Error("the audio file arrived incomplete");
  return { file, format };
}

function assemble(pieces: Iterable<{ offset: number; data: Uint8Array }>, total: number): Uint8Array | null {
  if (total < 0) return null;
  const file = new Uint8Array(total);
  const covered: [number, number][] = [];
  for (const { offset, data } of pieces) {
    const len = Math.max(0, Math.min(data.length, total - offset));
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
  private pieces = new Map<number, Uint8Array>();
  private total = -1;
  private readonly ctrl = new AbortController();
  private stopped = false;
  private endedOnce = false;

  constructor(
    private readonly storeKey: string,
    readonly prompt: string,
    private readonly hooks: JobHooks,
  ) {}

  /** A job this page followed before it was reloaded. */
  static resume(storeKey: string, saved: Saved, hooks: JobHooks): Job {
    const j = new Job(storeKey, saved.prompt, hooks);
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

  /** Asks the server to cancel; the stream then ends with Cancelled. */
  async cancel(): Promise<void> {
    if (!this.id || this.terminal) return;
    await api.cancelGeneration({ generationId: this.id });
  }

  private watchOpener(): Opener {
    return (signal) => api.watch({ generationId: this.id, afterSequence: this.lastSeq }, { signal });
  }

  private persist(): void {
    if (!this.id) return;
    const saved: Saved = {
      id: this.id,
      seq: this.lastSeq.toString(),
      done: this.terminal !== null,
      prompt: this.prompt,
      percent: this.percent,
    };
    try {
      localStorage.setItem(this.storeKey, JSON.stringify(saved));
    } catch {
      /* storage full or off: the job just cannot be picked up after a reload */
    }
  }

  private forget(): void {
    try {
      localStorage.removeItem(this.storeKey);
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
        else this.hooks.error(error ?? { kind: "network", code: 14, message: "the stream ended early" }, false);
        return;
      }
      const wait = error?.kind === "busy" ? (error.retryAfter ?? 5) * 1000 : BACKOFF_MS[fails];
      fails++;
      this.hooks.link("reconnecting", Math.ceil(wait / 1000));
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
        this.hooks.chunk(e.value);
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
    this.persist();
  }

  private complete(c: Completed): void {
    this.terminal = "completed";
    if (c.format) this.format = c.format;
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
        this.hooks.link("offline");
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
        if (g.result) this.complete(g.result);
        else this.terminal = "completed";
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

  /** The final file: the pieces that came with the stream when all are here, else GetAudio. */
  private async finishAudio(): Promise<void> {
    const inline = this.total >= 0 ? assemble(Array.from(this.pieces, ([offset, data]) => ({ offset, data })), this.total) : null;
    this.pieces.clear();
    if (inline) {
      this.hooks.audio(inline, this.format);
      return;
    }
    this.hooks.link("fetching");
    for (let attempt = 0; ; attempt++) {
      try {
        const { file, format } = await fetchAudio(this.id, this.ctrl.signal);
        this.hooks.link("");
        this.hooks.audio(file, format || this.format);
        return;
      } catch (e) {
        if (this.stopped) return;
        const f = fault(e);
        if (!retryable(f) || attempt >= 4) {
          this.hooks.link("audioFailed");
          this.hooks.error(f, true);
          return;
        }
        await sleep(1000 * 2 ** attempt, this.ctrl.signal);
      }
    }
  }
}

// Live preview: the AudioChunk PCM a model streams while it runs, played through Web Audio.
// Each chunk is placed on one timeline by its start_frame, so consecutive chunks join
// without gaps or overlaps. Only the next few seconds are handed to the audio graph; the
// rest waits as compact 16-bit PCM (a fast model can stream minutes of audio in seconds).

import type { AudioChunk } from "./gen/son1k/v1/son1k_pb";

const LOOKAHEAD_S = 2.5;
/** Audio further ahead than this is dropped: the finished file takes over long before. */
const MAX_AHEAD_S = 90;
const START_DELAY_S = 0.2;

interface Pending {
  at: number; // seconds into the output
  rate: number;
  channels: number;
  pcm: Uint8Array;
}

export class LivePlayer {
  private readonly ctx: AudioContext;
  private origin: number | null = null; // context time of output second 0
  private queue: Pending[] = [];
  private sources = new Set<AudioBufferSourceNode>();
  private timer: number | undefined;
  private closed = false;
  /** Called with true when sound starts, false when it stops. */
  onPlaying: (playing: boolean) => void = () => {};
  private playing = false;

  /** Create inside a click handler, so that the browser lets it make sound. */
  constructor() {
    this.ctx = new AudioContext();
  }

  push(chunk: AudioChunk): void {
    if (this.closed || !chunk.sampleRate || !chunk.channels || !chunk.pcmS16le.length) return;
    const heard = this.position() ?? 0;
    if (Number(chunk.startFrame) / chunk.sampleRate > heard + MAX_AHEAD_S) return;
    const p: Pending = {
      at: Number(chunk.startFrame) / chunk.sampleRate,
      rate: chunk.sampleRate,
      channels: chunk.channels,
      pcm: chunk.pcmS16le,
    };
    // Chunks come in order; keep the queue sorted should one ever not.
    let i = this.queue.length;
    while (i > 0 && this.queue[i - 1].at > p.at) i--;
    this.queue.splice(i, 0, p);
    this.pump();
  }

  /** Seconds of output heard so far, or null before the first chunk. */
  position(): number | null {
    if (this.origin === null) return null;
    return Math.max(0, this.ctx.currentTime - this.origin);
  }

  get active(): boolean {
    return !this.closed && (this.sources.size > 0 || this.queue.length > 0);
  }

  private pump = (): void => {
    if (this.closed) return;
    const now = this.ctx.currentTime;
    while (this.queue.length) {
      const p = this.queue[0];
      if (this.origin === null) this.origin = now + START_DELAY_S - p.at;
      // Behind real time (the model or the network stalled): start again a little later
      // instead of piling chunks on top of each other.
      if (this.origin + p.at < now + 0.02) this.origin = now + 0.1 - p.at;
      const when = this.origin + p.at;
      if (when > now + LOOKAHEAD_S) break;
      this.queue.shift();
      this.schedule(p, when);
    }
    clearTimeout(this.timer);
    if (this.queue.length) this.timer = window.setTimeout(this.pump, 250);
  };

  private schedule(p: Pending, when: number): void {
    const n = p.channels;
    const frames = Math.floor(p.pcm.length / (2 * n));
    if (!frames) return;
    const buffer = this.ctx.createBuffer(n, frames, p.rate);
    const view = new DataView(p.pcm.buffer, p.pcm.byteOffset, p.pcm.byteLength);
    for (let c = 0; c < n; c++) {
      const out = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) out[i] = view.getInt16((i * n + c) * 2, true) / 32768;
    }
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.ctx.destination);
    src.onended = () => {
      this.sources.delete(src);
      if (!this.sources.size && !this.queue.length) this.setPlaying(false);
    };
    this.sources.add(src);
    src.start(when);
    this.setPlaying(true);
  }

  private setPlaying(on: boolean): void {
    if (on === this.playing) return;
    this.playing = on;
    this.onPlaying(on);
  }

  stop(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.queue = [];
    for (const s of this.sources) {
      try {
        s.stop();
      } catch {
        /* already ended */
      }
    }
    this.sources.clear();
    this.setPlaying(false);
    void this.ctx.close().catch(() => {});
  }
}

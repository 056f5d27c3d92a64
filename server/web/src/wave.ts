// A waveform on a canvas, tied to an <audio> element: the part played so far is drawn in
// the accent colour, and a click on the waveform seeks there.

const BUCKETS = 1600;

/** Peaks (0..1) of an encoded audio file, or null when this browser cannot decode it. */
export async function peaksOf(file: ArrayBuffer): Promise<{ peaks: Float32Array; duration: number } | null> {
  try {
    // A low rate is plenty for a picture and keeps long files cheap to decode.
    const ctx = new OfflineAudioContext(1, 1, 8000);
    const audio = await ctx.decodeAudioData(file.slice(0));
    const peaks = new Float32Array(BUCKETS);
    const per = Math.max(1, audio.length / BUCKETS);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const data = audio.getChannelData(c);
      for (let b = 0; b < BUCKETS; b++) {
        const from = Math.floor(b * per);
        const to = Math.min(data.length, Math.floor((b + 1) * per));
        let m = peaks[b];
        for (let i = from; i < to; i++) {
          const v = Math.abs(data[i]);
          if (v > m) m = v;
        }
        peaks[b] = m;
      }
    }
    let max = 0;
    for (const v of peaks) if (v > max) max = v;
    if (max > 0) for (let b = 0; b < BUCKETS; b++) peaks[b] /= max;
    return { peaks, duration: audio.duration };
  } catch {
    return null;
  }
}

export class Waveform {
  private peaks: Float32Array | null = null;
  private frame = 0;
  private readonly observer: ResizeObserver;
  private readonly scheme = matchMedia("(prefers-color-scheme: dark)");
  private readonly redraw = (): void => this.draw();

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly audio: HTMLAudioElement,
  ) {
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(canvas);
    const tick = () => {
      this.draw();
      if (!audio.paused) this.frame = requestAnimationFrame(tick);
    };
    audio.addEventListener("play", () => {
      cancelAnimationFrame(this.frame);
      this.frame = requestAnimationFrame(tick);
    });
    for (const ev of ["pause", "seeked", "timeupdate", "loadedmetadata", "emptied"]) {
      audio.addEventListener(ev, () => this.draw());
    }
    canvas.addEventListener("click", (e) => {
      if (!this.peaks || !Number.isFinite(audio.duration)) return;
      const rect = canvas.getBoundingClientRect();
      audio.currentTime = ((e.clientX - rect.left) / rect.width) * audio.duration;
    });
    this.scheme.addEventListener("change", this.redraw);
  }

  /** Stops watching the canvas's size and the colour scheme (the player is going away). */
  dispose(): void {
    cancelAnimationFrame(this.frame);
    this.observer.disconnect();
    this.scheme.removeEventListener("change", this.redraw);
    this.peaks = null;
  }

  set(peaks: Float32Array | null): void {
    this.peaks = peaks;
    this.canvas.classList.toggle("empty", !peaks);
    this.draw();
  }

  draw(): void {
    const { canvas, audio } = this;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const g = canvas.getContext("2d");
    if (!g) return;
    g.clearRect(0, 0, w, h);
    const style = getComputedStyle(canvas);
    const played = style.getPropertyValue("--wave-played").trim() || "#6d5efc";
    const rest = style.getPropertyValue("--wave-rest").trim() || "#b8bdd0";
    const bar = Math.max(2, Math.round(3 * dpr));
    const gap = Math.max(1, Math.round(1.5 * dpr));
    const n = Math.max(1, Math.floor(w / (bar + gap)));
    const progress = this.peaks && Number.isFinite(audio.duration) && audio.duration > 0 ? audio.currentTime / audio.duration : 0;
    const mid = h / 2;
    for (let i = 0; i < n; i++) {
      let v = 0.04;
      if (this.peaks) {
        const from = Math.floor((i / n) * this.peaks.length);
        const to = Math.max(from + 1, Math.floor(((i + 1) / n) * this.peaks.length));
        let m = 0;
        for (let b = from; b < to; b++) m = Math.max(m, this.peaks[b]);
        v = Math.max(0.04, m);
      }
      const bh = Math.max(bar, v * (h - 2 * dpr));
      const x = i * (bar + gap);
      g.fillStyle = (i + 0.5) / n <= progress ? played : rest;
      g.beginPath();
      g.roundRect(x, mid - bh / 2, bar, bh, bar / 2);
      g.fill();
    }
  }
}

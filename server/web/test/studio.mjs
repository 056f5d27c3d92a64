// The studio in a real browser against a real `son1k serve` (the bundle embedded in the
// binary, not --web-dir). Each step prints its name as it runs; exit code 0 = all passed.
//
//   SON1K_BIN=target/debug/son1k SON1K_SCREENSHOTS=/tmp/shots node server/web/test/studio.mjs
//
// SON1K_BIN (required): the server binary. SON1K_SCREENSHOTS: where the screenshots go
// (default: a new temporary directory). SON1K_CHROMIUM: the browser (default /usr/bin/chromium).
// SON1K_TEST_WEB_DIR (only while working on the page): serve that directory with --web-dir
// instead of the bundle built into the binary.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const started = Date.now();
const BIN = process.env.SON1K_BIN;
if (!BIN) {
  console.error("studio test: set SON1K_BIN to the son1k binary (e.g. target/debug/son1k)");
  process.exit(2);
}
const SHOTS = resolve(process.env.SON1K_SCREENSHOTS || mkdtempSync(join(tmpdir(), "son1k-shots-")));
mkdirSync(SHOTS, { recursive: true });
const work = mkdtempSync(join(tmpdir(), "son1k-studio-test-"));

// ---- servers ----
const servers = [];

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function startServer(name, extra = []) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(work, `${name}-data-`));
  const args = ["serve", "--addr", `127.0.0.1:${port}`, "--data-dir", dataDir, "--max-duration", "600", ...extra];
  if (process.env.SON1K_TEST_WEB_DIR) args.push("--web-dir", resolve(process.env.SON1K_TEST_WEB_DIR));
  const proc = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (d) => {
    log = (log + d.toString()).slice(-20000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  const server = { name, port, proc, url: `http://127.0.0.1:${port}/`, log: () => log };
  servers.push(server);
  let exited = null;
  proc.on("exit", (code, sig) => {
    exited = `exited with ${code ?? sig}`;
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`son1k serve (${name}) ${exited} before it served:\n${log}`);
    try {
      const r = await fetch(server.url);
      if (r.ok) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) throw new Error(`son1k serve (${name}) did not answer on ${server.url} within 60 s:\n${log}`);
    await sleep(150);
  }
  return server;
}

function stopServers() {
  for (const s of servers) {
    if (s.proc.exitCode === null && s.proc.signalCode === null) {
      try {
        s.proc.kill("SIGKILL");
      } catch {
        /* gone */
      }
    }
  }
}

let browser = null;
let lastPage = null; // screenshotted when a step fails
async function cleanup() {
  stopServers();
  if (browser) await browser.close().catch(() => {});
  rmSync(work, { recursive: true, force: true });
}
process.on("exit", stopServers);
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    stopServers();
    process.exit(130);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- steps ----
let current = null;
let passed = 0;
async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  console.log(`▶ ${name}`);
  await fn();
  passed++;
  console.log(`✓ ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

// ---- a song for Ghost Studio: a 6 s sine melody, 16-bit mono WAV ----
function melodyWav(seconds = 6, rate = 22050) {
  const notes = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65]; // C major up and down
  const frames = Math.round(seconds * rate);
  const data = Buffer.alloc(frames * 2);
  const per = frames / notes.length;
  let phase = 0;
  for (let i = 0; i < frames; i++) {
    const n = notes[Math.min(notes.length - 1, Math.floor(i / per))];
    const f = 440 * 2 ** ((n - 69) / 12);
    phase += (2 * Math.PI * f) / rate;
    const within = (i % per) / per;
    const env = Math.min(1, within * 40) * Math.exp(-2.5 * within); // a plucked note
    data.writeInt16LE(Math.round(Math.sin(phase) * 0.5 * env * 32767), i * 2);
  }
  const h = Buffer.alloc(44);
  h.write("RIFF", 0);
  h.writeUInt32LE(36 + data.length, 4);
  h.write("WAVE", 8);
  h.write("fmt ", 12);
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(1, 22); // mono
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 2, 28);
  h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34);
  h.write("data", 36);
  h.writeUInt32LE(data.length, 40);
  return Buffer.concat([h, data]);
}

// ---- page helpers ----
async function audioDuration(page, selector, timeout) {
  await page.waitForFunction(
    (sel) => {
      const a = document.querySelector(sel);
      return a && a.currentSrc && Number.isFinite(a.duration) && a.duration > 0;
    },
    selector,
    { timeout },
  );
  return page.$eval(selector, (a) => a.duration);
}

/** Records every aria-valuenow the progress bar takes, from now on. */
async function recordProgress(page, id) {
  await page.evaluate((id) => {
    const bar = document.getElementById(id);
    window.__seen = [Number(bar.getAttribute("aria-valuenow"))];
    new MutationObserver(() => window.__seen.push(Number(bar.getAttribute("aria-valuenow")))).observe(bar, {
      attributes: true,
      attributeFilter: ["aria-valuenow"],
    });
  }, id);
}

async function noSidewaysScroll(page, what) {
  const { sw, cw, wide } = await page.evaluate(() => {
    const cw = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll("body *")]
      .filter((el) => el.getBoundingClientRect().right > cw + 0.5 && el.getClientRects().length)
      .slice(0, 5)
      .map((el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""}.${[...el.classList].join(".")}`);
    return { sw: document.documentElement.scrollWidth, cw, wide };
  });
  check(sw <= cw, `${what}: the page scrolls sideways at phone width (scrollWidth ${sw} > clientWidth ${cw}; too wide: ${wide.join(", ")})`);
}

/** A full-page screenshot from the top (so the sticky history sits where it belongs). */
async function shot(page, opts) {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(100);
  await page.screenshot(opts);
}

// Every page of every context reports here: uncaught errors and console errors (which
// include Content-Security-Policy violations).
const pageErrors = [];
function watchErrors(context) {
  const attach = (page) => {
    page.on("pageerror", (e) => pageErrors.push(`${page.url()}: ${e.message}`));
    page.on("console", (m) => {
      // (The network-loss step cuts Watch calls on purpose; the browser logs each.)
      if (m.type() === "error" && !/ERR_CONNECTION_RESET/.test(m.text())) pageErrors.push(`${page.url()}: ${m.text()}`);
    });
  };
  context.on("page", attach);
  for (const p of context.pages()) attach(p);
  return context;
}
const newContext = async (opts) => watchErrors(await browser.newContext(opts));

const LAUNCH = {
  executablePath: process.env.SON1K_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
};

async function main() {
  const open = await startServer("open");
  const locked = await startServer("tokens", ["--tokens-file", writeTokens(), "--max-song-bytes", "100000"]);
  browser = await chromium.launch(LAUNCH);

  const ctx = await newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
  const page = await ctx.newPage();
  lastPage = page;
  await page.goto(open.url);
  await page.waitForSelector("#gen-model option", { state: "attached" });
  const dupes = await page.evaluate(() => {
    const seen = new Map();
    for (const el of document.querySelectorAll("[id]")) seen.set(el.id, (seen.get(el.id) ?? 0) + 1);
    return [...seen].filter(([, n]) => n > 1).map(([id]) => id);
  });
  check(dupes.length === 0, `ids used twice: ${dupes.join(", ")}`);

  await step("Generator: an 8 s synth job shows progress up to 100 % and ends in an 8 s <audio>", async () => {
    await page.fill("#gen-prompt", "Lo-fi hip hop at 80 BPM in A minor, mellow piano and vinyl crackle");
    await page.fill("#gen-duration", "8");
    await page.selectOption("#gen-format", "1");
    await page.fill("#gen-seed", "42");
    await recordProgress(page, "gen-progress");
    await page.click("#gen-submit");
    const d = await audioDuration(page, "#gen-out-audio", 30_000);
    check(Math.abs(d - 8) < 0.05, `the audio lasts ${d} s, not 8 s`);
    const bar = await page.$eval("#gen-progress", (b) => ({ role: b.getAttribute("role"), now: b.getAttribute("aria-valuenow") }));
    check(bar.role === "progressbar" && bar.now === "100", `the progress bar ends at ${bar.now}, not 100`);
    const seen = await page.evaluate(() => window.__seen);
    check(seen.includes(100), `the progress bar never showed 100 (saw ${seen.join(", ")})`);
    // 0 only until the job first moves; from then on it never goes back.
    const moved = seen.findIndex((v) => v > 0);
    for (let i = 1; i < seen.length; i++) {
      if (seen[i] === 0) check(moved < 0 || i < moved, `progress fell back to 0: ${seen.join(", ")}`);
      else check(seen[i] >= seen[i - 1], `progress went backwards: ${seen.join(", ")}`);
    }
    const info = await page.evaluate(() => ({
      understood: [...document.querySelectorAll("#gen-understood dt")].map((dt) => dt.textContent),
      facts: Object.fromEntries([...document.querySelectorAll("#gen-facts .kv")].map((kv) => [kv.querySelector("dt").textContent, kv.querySelector("dd").textContent])),
    }));
    check(info.understood.includes("Genre") && info.understood.includes("Key"), `"what the model understood" lacks the genre or key: ${info.understood}`);
    const f = info.facts;
    check(f.Seed === "42" && f.Model === "son1k-synth" && f.Duration === "8 s", `the seed, model or duration is missing: ${JSON.stringify(f)}`);
    const dl = await page.$eval("#gen-download", (a) => ({ name: a.download, href: a.href }));
    check(dl.name === "lo-fi-hip-hop-at-80-bpm-in-a-minor-mellow-piano.wav" && dl.href.startsWith("blob:"), `download link: ${JSON.stringify(dl)}`);
    await page.waitForFunction(() => !document.getElementById("gen-out-wave").classList.contains("empty"), null, { timeout: 10_000 });
    await shot(page, { path: join(SHOTS, "generator-desktop.png"), fullPage: true });
  });

  await step("Reconnecting: a reload mid-job re-attaches by itself and completes", async () => {
    await page.fill("#gen-prompt", "Ambient drone with slow evolving pads in D");
    await page.fill("#gen-duration", "600");
    await page.fill("#gen-seed", "");
    await page.uncheck("#gen-live");
    await page.click("#gen-submit");
    await page.waitForFunction(
      () => {
        const v = Number(document.getElementById("gen-progress").getAttribute("aria-valuenow"));
        const saved = JSON.parse(sessionStorage.getItem("son1k.job.gen") || "null");
        return v > 0 && v < 100 && saved && saved.id && Number(saved.seq) > 0;
      },
      null,
      { timeout: 30_000, polling: 20 },
    );
    const before = await page.evaluate(() => ({
      pct: Number(document.getElementById("gen-progress").getAttribute("aria-valuenow")),
      saved: JSON.parse(sessionStorage.getItem("son1k.job.gen")),
    }));
    console.log(`  reloading at ${before.pct} % (job ${before.saved.id}, after sequence ${before.saved.seq})`);
    await page.reload();
    // Nothing is clicked from here on.
    await page.waitForSelector("#gen-job:not([hidden])", { timeout: 5_000 });
    const jobId = await page.$eval("#gen-job", (el) => el.dataset.id || "");
    const d = await audioDuration(page, "#gen-out-audio", 90_000);
    check(Math.abs(d - 600) < 0.05, `the resumed job's audio lasts ${d} s, not 600 s`);
    const now = await page.$eval("#gen-progress", (b) => b.getAttribute("aria-valuenow"));
    check(now === "100", `the resumed job's progress ends at ${now}`);
    const saved = await page.evaluate(() => JSON.parse(sessionStorage.getItem("son1k.job.gen")));
    check(saved.id === before.saved.id && saved.done === true, `after the reload the page followed ${saved.id} (done: ${saved.done}), not ${before.saved.id}`);
    check(jobId === before.saved.id, `the card shows job ${jobId}, not ${before.saved.id}`);
    // The record is this tab's alone (sessionStorage), with the token's fingerprint, not the token.
    check(/^[0-9a-f]{8}$/.test(saved.token || ""), `the saved job has no token fingerprint: ${JSON.stringify(saved)}`);
    const shared = await page.evaluate(() => localStorage.getItem("son1k.job.gen"));
    check(shared === null, `the job is saved where every tab sees it: ${shared}`);
    await page.check("#gen-live");
  });

  await step("Network loss: when Watch keeps failing, the page backs off, polls GetGeneration and completes", async () => {
    await page.fill("#gen-prompt", "Slow jazz trio with brushed drums");
    await page.fill("#gen-duration", "300");
    await page.uncheck("#gen-live");
    await page.click("#gen-submit");
    await page.waitForFunction(
      () => {
        const v = Number(document.getElementById("gen-progress").getAttribute("aria-valuenow"));
        return v > 0 && v < 100 && JSON.parse(sessionStorage.getItem("son1k.job.gen") || "{}").done === false;
      },
      null,
      { timeout: 30_000, polling: 20 },
    );
    const calls = { Watch: 0, GetGeneration: 0, GetAudio: 0 };
    const count = (req) => {
      const m = /GenerationService\/(\w+)$/.exec(req.url());
      if (m && m[1] in calls) calls[m[1]]++;
    };
    page.on("request", count);
    await page.route("**/son1k.v1.GenerationService/Watch", (r) => r.abort("connectionreset"));
    await page.reload();
    await page.waitForFunction(() => /reconnecting/i.test(document.getElementById("gen-status").textContent), null, { timeout: 5_000 });
    const d = await audioDuration(page, "#gen-out-audio", 60_000);
    await page.unroute("**/son1k.v1.GenerationService/Watch");
    page.off("request", count);
    check(Math.abs(d - 300) < 0.05, `the polled job's audio lasts ${d} s, not 300 s`);
    check(calls.Watch >= 5 && calls.GetGeneration >= 1 && calls.GetAudio >= 1, `calls: ${JSON.stringify(calls)}`);
    await page.check("#gen-live");
  });

  await step("Ghost Studio: an uploaded song becomes a cover, original and cover side by side", async () => {
    const song = join(work, "melody.wav");
    writeFileSync(song, melodyWav(6));
    await page.click("#tab-cover");
    await page.setInputFiles("#cover-file", song);
    await page.waitForFunction(() => /6 s/.test(document.getElementById("cover-file-info").textContent), null, { timeout: 10_000 });
    await page.fill("#cover-prompt", "As a bossa nova with nylon guitar and soft brushes");
    await page.fill("#cover-duration", "0");
    await page.click("#cover-submit");
    const d = await audioDuration(page, "#cover-out-audio", 60_000);
    check(Math.abs(d - 6) < 0.1, `the cover lasts ${d} s; the song lasts 6 s`);
    const o = await audioDuration(page, "#cover-orig-audio", 10_000);
    check(Math.abs(o - 6) < 0.05, `the original plays ${o} s`);
    await page.waitForFunction(
      () => ["cover-orig-wave", "cover-out-wave"].every((id) => {
        const c = document.getElementById(id);
        return c && !c.classList.contains("empty") && c.width > 0 && c.getBoundingClientRect().height > 0;
      }),
      null,
      { timeout: 10_000 },
    );
    const side = await page.evaluate(() => {
      const a = document.getElementById("cover-orig").getBoundingClientRect();
      const b = document.getElementById("cover-out").getBoundingClientRect();
      return Math.abs(a.top - b.top) < 2 && a.right <= b.left;
    });
    check(side, "at desktop width the original and the cover are not side by side");
    await shot(page, { path: join(SHOTS, "studio-desktop.png"), fullPage: true });
  });

  await step("History: the four jobs are listed, newest first, all completed", async () => {
    await page.waitForFunction(
      () => {
        const items = [...document.querySelectorAll("#history-list > li")];
        return items.length === 4 && items.every((li) => li.dataset.state === "completed");
      },
      null,
      { timeout: 15_000 },
    ).catch(async () => {
      const got = await page.$$eval("#history-list > li", (lis) => lis.map((li) => `${li.dataset.state}: ${li.querySelector(".h-prompt").textContent}`));
      throw new Error(`the history lists ${got.length} jobs: ${got.join(" | ")}`);
    });
    const items = await page.$$eval("#history-list > li", (lis) => lis.map((li) => ({ kind: li.querySelector(".h-kind").textContent, prompt: li.querySelector(".h-prompt").textContent, badge: li.querySelector(".badge").textContent })));
    check(items[0].prompt.startsWith("As a bossa nova") && items[0].kind === "Cover", `newest first: ${JSON.stringify(items[0])}`);
    check(items[3].prompt.startsWith("Lo-fi hip hop") && items.filter((i) => i.kind === "Track").length === 3, `oldest last: ${JSON.stringify(items)}`);
    check(items.every((i) => i.badge === "Completed"), `states: ${items.map((i) => i.badge).join(", ")}`);
    // A finished job plays again: its audio is fetched on demand.
    await page.click("#history-list > li:last-child .h-play");
    const d = await audioDuration(page, "#history-list > li:last-child audio", 15_000);
    check(Math.abs(d - 8) < 0.05, `the history's copy of the first job lasts ${d} s`);
  });

  await step("Phone width (375 × 740): no sideways scrolling on either tab", async () => {
    await page.setViewportSize({ width: 375, height: 740 });
    await page.click("#tab-gen");
    await page.waitForTimeout(200);
    await noSidewaysScroll(page, "Generator");
    await shot(page, { path: join(SHOTS, "generator-phone.png"), fullPage: true });
    await page.click("#tab-cover");
    await page.waitForTimeout(200);
    await noSidewaysScroll(page, "Ghost Studio");
    const stacked = await page.evaluate(() => {
      const a = document.getElementById("cover-orig").getBoundingClientRect();
      const b = document.getElementById("cover-out").getBoundingClientRect();
      return a.bottom <= b.top;
    });
    check(stacked, "at phone width the original and the cover are not stacked");
    await shot(page, { path: join(SHOTS, "studio-phone.png"), fullPage: true });
    // A fresh page at phone width too (the forms alone).
    const phone = await newContext({ viewport: { width: 375, height: 740 }, locale: "en-US", isMobile: true, hasTouch: true });
    const p = await phone.newPage();
    await p.goto(open.url);
    await p.waitForSelector("#gen-model option", { state: "attached" });
    await noSidewaysScroll(p, "Generator (fresh)");
    await p.click("#tab-cover");
    await noSidewaysScroll(p, "Ghost Studio (fresh)");
    await phone.close();
  });

  await step("Keyboard: the tabs are a tablist moved with the arrow keys", async () => {
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.focus("#tab-cover");
    await page.keyboard.press("ArrowRight");
    let state = await page.evaluate(() => ({ focus: document.activeElement.id, sel: document.getElementById("tab-gen").getAttribute("aria-selected"), hidden: document.getElementById("panel-cover").hidden }));
    check(state.focus === "tab-gen" && state.sel === "true" && state.hidden, `ArrowRight from Ghost Studio: ${JSON.stringify(state)}`);
    await page.keyboard.press("ArrowLeft");
    state = await page.evaluate(() => ({ focus: document.activeElement.id, sel: document.getElementById("tab-cover").getAttribute("aria-selected") }));
    check(state.focus === "tab-cover" && state.sel === "true", `ArrowLeft: ${JSON.stringify(state)}`);
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea, button")]
        .filter((el) => !el.closest("[hidden]") && !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby") && !el.textContent.trim())
        .map((el) => el.id || el.outerHTML.slice(0, 60)),
    );
    check(unlabelled.length === 0, `controls without a label: ${unlabelled.join(", ")}`);
  });

  await step("Tokens: a wrong token shows the error next to the token field", async () => {
    const c = await newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
    const p = await c.newPage();
    lastPage = p;
    await p.goto(locked.url);
    // No token yet: the page asks for one at the token field.
    await p.waitForSelector("#token-err:not([hidden])", { timeout: 10_000 });
    await p.fill("#token", "not-the-right-token-000");
    await p.press("#token", "Tab");
    await p.fill("#gen-prompt", "a short test");
    await p.fill("#gen-duration", "2");
    await p.click("#gen-submit");
    await p.waitForFunction(() => /not accepted/.test(document.getElementById("token-err").textContent), null, { timeout: 10_000 });
    const s = await p.evaluate(() => {
      const input = document.getElementById("token");
      const err = document.getElementById("token-err");
      return {
        invalid: input.getAttribute("aria-invalid"),
        describedBy: input.getAttribute("aria-describedby") || "",
        role: err.getAttribute("role"),
        visible: !err.hidden && err.getBoundingClientRect().height > 0,
        sameField: err.parentElement === input.parentElement,
        submitErr: !document.getElementById("gen-submit-err").hidden,
        stored: localStorage.getItem("son1k.token"),
      };
    });
    check(s.invalid === "true" && s.describedBy.split(" ").includes("token-err"), `token field not marked invalid: ${JSON.stringify(s)}`);
    check(s.role === "alert" && s.visible && s.sameField && !s.submitErr, `token error not shown next to the field: ${JSON.stringify(s)}`);
    check(s.stored === "not-the-right-token-000", `the token is not kept in localStorage: ${s.stored}`);
    // The right token clears the error, lists the models, and generates.
    await p.fill("#token", "alice-studio-token-0123456789");
    await p.press("#token", "Tab");
    await p.waitForSelector("#token-err", { state: "hidden", timeout: 10_000 });
    await p.waitForSelector("#gen-model option", { state: "attached" });
    await p.click("#gen-submit");
    const d = await audioDuration(p, "#gen-out-audio", 30_000);
    check(Math.abs(d - 2) < 0.05, `with the right token the job's audio lasts ${d} s`);
    // This server takes songs of at most 100000 bytes (--max-song-bytes, published by
    // ListModels): a larger one is refused at its field before it is sent.
    await p.click("#tab-cover");
    await p.setInputFiles("#cover-file", join(work, "melody.wav"));
    await p.waitForSelector("#cover-file-err:not([hidden])", { timeout: 5_000 });
    const limit = await p.$eval("#cover-file-err", (e) => e.textContent);
    check(/97\.7 KiB/.test(limit), `the upload limit from the server is not the one shown: ${limit}`);
    await c.close();
  });

  await step("Spanish: with locale es-ES the page speaks Spanish", async () => {
    const c = await newContext({ viewport: { width: 1280, height: 900 }, locale: "es-ES" });
    const p = await c.newPage();
    lastPage = p;
    await p.goto(open.url);
    await p.waitForSelector("#gen-model option", { state: "attached" });
    const s = await p.evaluate(() => ({
      lang: document.documentElement.lang,
      tab: document.getElementById("tab-gen").textContent.trim(),
      submit: document.getElementById("gen-submit").textContent.trim(),
      cover: document.getElementById("cover-submit").textContent.trim(),
      placeholder: document.getElementById("gen-prompt").placeholder,
      history: document.getElementById("history-title").textContent.trim(),
      badges: [...document.querySelectorAll("#history-list .badge")].map((b) => b.textContent),
      text: document.body.innerText,
    }));
    check(s.lang === "es", `<html lang> is ${s.lang}`);
    check(s.tab === "Generador" && s.submit === "Generar" && s.cover === "Crear la versión" && s.history === "Historial", `not Spanish: ${JSON.stringify({ ...s, text: undefined })}`);
    check(/^Synthwave soñador/.test(s.placeholder), `the prompt placeholder is not Spanish: ${s.placeholder}`);
    check(s.badges.length > 0 && s.badges.every((b) => b === "Completado"), `history states not in Spanish: ${s.badges.join(", ")}`);
    for (const word of ["Generate", "Prompt", "History", "Duration", "Format", "Completed"]) {
      check(!new RegExp(`\\b${word}\\b`).test(s.text), `English left on the Spanish page: "${word}"`);
    }
    await p.setViewportSize({ width: 375, height: 740 });
    await noSidewaysScroll(p, "Generador (es)");
    await p.click("#tab-cover");
    await noSidewaysScroll(p, "Ghost Studio (es)");
    await c.close();
  });

  await step("Injection: a prompt of HTML is shown as text and never runs", async () => {
    lastPage = page;
    const evil = '<img src=x onerror="window.__x=1">';
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.click("#tab-gen");
    await page.fill("#gen-prompt", evil);
    await page.fill("#gen-duration", "1");
    await page.click("#gen-submit");
    await audioDuration(page, "#gen-out-audio", 30_000);
    await page.waitForFunction(
      (evil) => [...document.querySelectorAll("#history-list .h-prompt")].some((p) => p.textContent === evil),
      evil,
      { timeout: 10_000 },
    );
    await page.waitForTimeout(300); // (time for an injected <img> to fail to load)
    const s = await page.evaluate((evil) => ({
      x: typeof window.__x,
      card: document.getElementById("gen-job-prompt").textContent,
      caption: document.querySelector("#gen-out .player-sub").textContent,
      history: [...document.querySelectorAll("#history-list .h-prompt")].filter((p) => p.textContent === evil).length,
      imgs: document.querySelectorAll("#gen-job img, #history-list img").length,
    }), evil);
    check(s.card === evil && s.caption === evil, `the card does not show the prompt as text: ${JSON.stringify(s)}`);
    check(s.history === 1, `the history does not show the prompt as text: ${JSON.stringify(s)}`);
    check(s.imgs === 0 && s.x === "undefined", `the prompt became markup: ${JSON.stringify(s)}`);
  });

  await step("Cancel: a 600 s job cancelled mid-run ends cancelled in the card and the history", async () => {
    lastPage = page;
    await page.fill("#gen-prompt", "A long drone that is cancelled halfway");
    await page.fill("#gen-duration", "600");
    await page.uncheck("#gen-live");
    await page.click("#gen-submit");
    await page.waitForFunction(
      () => {
        const v = Number(document.getElementById("gen-progress").getAttribute("aria-valuenow"));
        const cancel = document.getElementById("gen-cancel");
        return v > 0 && v < 100 && !cancel.hidden && !cancel.disabled && document.getElementById("gen-job").dataset.id;
      },
      null,
      { timeout: 30_000, polling: 20 },
    );
    const id = await page.$eval("#gen-job", (el) => el.dataset.id);
    // From the click on, every change to the page notes what the card and the job's row say.
    await page.evaluate((id) => {
      const card = document.getElementById("gen-job");
      const status = document.getElementById("gen-status");
      window.__after = [];
      const note = () => {
        const li = document.querySelector(`#history-list > li[data-id="${CSS.escape(id)}"]`);
        window.__after.push({ running: card.classList.contains("running"), status: status.textContent, row: li ? li.dataset.state : null });
      };
      window.__noter = new MutationObserver(note);
      window.__noter.observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
    }, id);
    await page.click("#gen-cancel");
    await page.waitForFunction(
      () => document.getElementById("gen-status").textContent === "Cancelled." && !document.getElementById("gen-job").classList.contains("running"),
      null,
      { timeout: 15_000 },
    );
    await page.waitForFunction(
      (id) => document.querySelector(`#history-list > li[data-id="${CSS.escape(id)}"]`)?.dataset.state === "cancelled",
      id,
      { timeout: 15_000 },
    );
    await page.waitForTimeout(3500); // past one more automatic refresh of the history
    const s = await page.evaluate(() => {
      window.__noter.disconnect();
      const card = document.getElementById("gen-job");
      return {
        after: window.__after,
        classes: card.className,
        status: document.getElementById("gen-status").textContent,
        pct: Number(document.getElementById("gen-progress").getAttribute("aria-valuenow")),
        audio: document.getElementById("gen-out-audio").getAttribute("src"),
        result: document.getElementById("gen-result").hidden,
        cancel: document.getElementById("gen-cancel").hidden,
        focus: document.activeElement && document.activeElement.id,
      };
    });
    check(s.status === "Cancelled." && !/\b(running|failed|done)\b/.test(s.classes), `the card does not end cancelled: ${JSON.stringify({ ...s, after: undefined })}`);
    check(s.pct < 100 && s.audio === null && s.result && s.cancel, `the cancelled job shows a result: ${JSON.stringify({ ...s, after: undefined })}`);
    check(s.focus === "gen-status", `the focus was lost when Cancel went away (on #${s.focus})`);
    const ended = s.after.findIndex((a) => a.status === "Cancelled." && !a.running);
    check(ended >= 0, "the card never read cancelled while it was watched");
    const later = s.after.slice(ended).filter((a) => a.running || a.status !== "Cancelled." || a.row === "running");
    check(later.length === 0, `after it was cancelled the job read running again: ${JSON.stringify(later.slice(0, 3))}`);
    await page.check("#gen-live");
  });

  await step("The page logged no errors", async () => {
    check(pageErrors.length === 0, `the page logged errors: ${pageErrors.join(" | ")}`);
  });
}

function writeTokens() {
  const f = join(work, "tokens");
  writeFileSync(f, "alice alice-studio-token-0123456789\nbob bob-studio-token-0123456789\n");
  return f;
}

try {
  await main();
  console.log(`${passed} passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${SHOTS})`);
  await cleanup();
  process.exit(0);
} catch (e) {
  console.error(`✗ ${current ?? "setup"}: ${e && e.stack ? e.stack : e}`);
  if (lastPage) {
    await lastPage.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
    console.error(`(the page at the failure: ${join(SHOTS, "failure.png")})`);
  }
  for (const s of servers) {
    const tail = s.log().split("\n").slice(-15).join("\n");
    if (tail.trim()) console.error(`--- son1k serve (${s.name}) log, last lines ---\n${tail}`);
  }
  console.log(`${passed} passed, 1 failed`);
  await cleanup();
  process.exit(1);
}

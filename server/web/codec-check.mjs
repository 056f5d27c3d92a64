// Checks the protobuf + grpc-web codec embedded in index.html (between `// BEGIN CODEC` and
// `// END CODEC`). Run: node server/web/codec-check.mjs
//
// Expected bytes were built independently (a few lines of Python writing tags, varints and
// lengths by hand, no protobuf library), so they do not share bugs with the codec.
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';

const html = readFileSync(new URL('./index.html', import.meta.url), 'utf8');
const begin = html.indexOf('// BEGIN CODEC'), end = html.indexOf('// END CODEC');
assert.ok(begin >= 0 && end > begin, 'codec markers not found in index.html');
const C = new Function(`${html.slice(begin, end)}\nreturn Son1kCodec;`)();

const hex = (s) => Uint8Array.from(s.match(/../g).map((b) => parseInt(b, 16)));
const toHex = (u8) => Buffer.from(u8).toString('hex');
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
};
const MAX_U64 = 2n ** 64n - 1n;

const GT = {
  generateRequest: '0a046c6f6669120b736f6e316b2d73796e746819000000000000244022101d0000c03f28ffffffffffffffffff0128023a0272314001',
  accepted: '0a026731100118012080d095ffbc31520f0803120b736f6e316b2d73796e7468',
  // with unknown fields 99 (varint), 100 (fixed64), 101 (bytes), 102 (fixed32) before the oneof
  progress: '0a026731100218012080d095ffbc31980607a106000000000000f03faa0603616263b506000000405a150d00002a421003186420c803290000000000802840',
  progressQueued: '0a026731100318012080d095ffbc315a0410013004',
  chunk: '0a026731100418012080d095ffbc3162100880f7021080f702180222040080ff7f',
  piece: '0a026731100518012080d095ffbc316a160880e497d0121204deadbeef1884e497d01220022801',
  completed: '0a026731100618012080d095ffbc31726a0900000000000024401080f702180220ffffffffffffffffff012a0b736f6e316b2d73796e7468323c0a046c6f6669302a38f403420d0a0567656e726512046c6f666942100a0574656d706f12073132302062706d420e0a036b6579120741206d696e6f72380240d209',
  failed: '0a026731100718012080d095ffbc317a1d08011219696e76616c6964206475726174696f6e3a203939203e203330',
  cancelled: '0a026731100818012080d095ffbc318201060a0475736572',
  // two models: capabilities packed in the first, unpacked in the second
  models: '0a280a0b736f6e316b2d73796e746810011a030102032080f7022802310000000000003e403a036370750a2b0a0e6d7573696367656e2d736d616c6c1002180118022080fa012801310000000000003e403a0463756461',
  watch: '0a0267311029',
  // a continuation cover: mode 2, clip from an explicit 0 s to 5.5 s
  coverRequest: '0a0201021201785002590000000000000000610000000000001640',
  negInt64: '20fbffffffffffffffff01',
};

const results = [];
async function check(name, fn) {
  try { await fn(); results.push([name, true]); } catch (e) { results.push([name, false, e]); }
}

// ---- protobuf ----
await check('encode GenerateRequest', () => {
  const req = { prompt: 'lofi', model: 'son1k-synth', duration_seconds: 10, sampling: { temperature: 1.5, seed: MAX_U64 },
    audio_format: 2, sample_format: 0, request_id: 'r1', cancel_on_disconnect: true };
  assert.equal(toHex(C.encode('GenerateRequest', req)), GT.generateRequest);
});
await check('decode GenerateRequest', () => {
  const r = C.decode('GenerateRequest', hex(GT.generateRequest));
  assert.equal(r.prompt, 'lofi'); assert.equal(r.model, 'son1k-synth'); assert.equal(r.duration_seconds, 10);
  assert.equal(r.sampling.temperature, 1.5); assert.equal(r.sampling.seed, MAX_U64);
  assert.equal(r.sampling.top_k, undefined, 'unset optional stays unset');
  assert.equal(r.audio_format, 2); assert.equal(r.sample_format, 0); assert.equal(r.request_id, 'r1');
  assert.equal(r.cancel_on_disconnect, true);
});
await check('encode CoverRequest with a mode and a clip', () => {
  const req = { song: new Uint8Array([1, 2]), prompt: 'x', mode: 2, clip_start_seconds: 0, clip_end_seconds: 5.5 };
  assert.equal(toHex(C.encode('CoverRequest', req)), GT.coverRequest);
  const r = C.decode('CoverRequest', hex(GT.coverRequest));
  assert.equal(r.mode, 2); assert.equal(r.clip_start_seconds, 0); assert.equal(r.clip_end_seconds, 5.5);
});
await check('proto3 defaults are not sent; optional zero is', () => {
  assert.equal(C.encode('GenerateRequest', { prompt: '', duration_seconds: 0, cancel_on_disconnect: false }).length, 0);
  assert.equal(toHex(C.encode('Sampling', { top_k: 0, seed: 0n })), '08002800');
  assert.equal(toHex(C.encode('GenerateRequest', { sampling: {} })), '2200', 'an empty set message is sent');
});
await check('encode WatchRequest, int64 negative', () => {
  assert.equal(toHex(C.encode('WatchRequest', { generation_id: 'g1', after_sequence: 41n })), GT.watch);
  assert.equal(toHex(C.encode('GenerationEvent', { time_unix_ms: -5n })), GT.negInt64);
  assert.equal(C.decode('GenerationEvent', hex(GT.negInt64)).time_unix_ms, -5n);
});
await check('CoverRequest bytes round trip (UTF-8 prompt)', () => {
  const song = new Uint8Array(300).map((_, i) => i & 0xff);
  const bytes = C.encode('CoverRequest', { song, prompt: 'bossa nova — ñ', duration_seconds: 0 });
  assert.equal(toHex(bytes.subarray(0, 3)), '0aac02', 'tag 1, length 300');
  const r = C.decode('CoverRequest', bytes);
  assert.deepEqual([...r.song], [...song]); assert.equal(r.prompt, 'bossa nova — ñ'); assert.equal(r.duration_seconds, 0);
});

const header = (ev, seq) => {
  assert.equal(ev.generation_id, 'g1'); assert.equal(ev.sequence, BigInt(seq));
  assert.equal(ev.kind, 1); assert.equal(ev.time_unix_ms, 1700000000000n);
};
await check('GenerationEvent: Accepted', () => {
  const ev = C.decode('GenerationEvent', hex(GT.accepted));
  header(ev, 1); assert.equal(ev.event, 'accepted');
  assert.deepEqual(ev.accepted, { queue_position: 3, model: 'son1k-synth' });
  assert.equal(ev.progress, undefined);
});
await check('GenerationEvent: Progress (and unknown fields of wire types 0, 1, 2, 5 skipped)', () => {
  const ev = C.decode('GenerationEvent', hex(GT.progress));
  header(ev, 2); assert.equal(ev.event, 'progress');
  assert.deepEqual(ev.progress, { percent: 42.5, stage: 3, frames_done: 100, frames_total: 456, eta_seconds: 12.25, queue_position: 0 });
  const q = C.decode('GenerationEvent', hex(GT.progressQueued)).progress;
  assert.equal(q.stage, 1); assert.equal(q.queue_position, 4); assert.equal(q.percent, 0);
  assert.equal(q.eta_seconds, undefined, 'unset optional eta');
});
await check('GenerationEvent: AudioChunk', () => {
  const ev = C.decode('GenerationEvent', hex(GT.chunk));
  assert.equal(ev.event, 'audio_chunk');
  const c = ev.audio_chunk;
  assert.equal(c.start_frame, 48000n); assert.equal(c.sample_rate, 48000); assert.equal(c.channels, 2);
  assert.equal(toHex(c.pcm_s16le), '0080ff7f');
});
await check('GenerationEvent: AudioPiece (64-bit offset)', () => {
  const ev = C.decode('GenerationEvent', hex(GT.piece));
  header(ev, 5); assert.equal(ev.event, 'audio');
  const p = ev.audio;
  assert.equal(p.offset, 5000000000n); assert.equal(toHex(p.data), 'deadbeef');
  assert.equal(p.total_bytes, 5000000004n); assert.equal(p.format, 2); assert.equal(p.last, true);
});
await check('GenerationEvent: Completed with parameters.understood', () => {
  const ev = C.decode('GenerationEvent', hex(GT.completed));
  header(ev, 6); assert.equal(ev.event, 'completed');
  const c = ev.completed;
  assert.equal(c.duration_seconds, 10); assert.equal(c.sample_rate, 48000); assert.equal(c.channels, 2);
  assert.equal(c.seed, MAX_U64); assert.equal(c.model, 'son1k-synth'); assert.equal(c.format, 2); assert.equal(c.audio_bytes, 1234n);
  assert.equal(c.parameters.prompt, 'lofi'); assert.equal(c.parameters.seed, 42n); assert.equal(c.parameters.frames, 500);
  assert.equal(c.parameters.top_p, 0);
  assert.deepEqual(c.parameters.understood, { genre: 'lofi', tempo: '120 bpm', key: 'A minor' });
});
await check('GenerationEvent: Failed, Cancelled', () => {
  const f = C.decode('GenerationEvent', hex(GT.failed));
  assert.equal(f.event, 'failed'); assert.deepEqual(f.failed, { code: 1, message: 'invalid duration: 99 > 30' });
  const c = C.decode('GenerationEvent', hex(GT.cancelled));
  assert.equal(c.event, 'cancelled'); assert.equal(c.sequence, 8n); assert.deepEqual(c.cancelled, { reason: 'user' });
});
await check('ListModelsResponse: packed and unpacked repeated enums', () => {
  const r = C.decode('ListModelsResponse', hex(GT.models));
  assert.equal(r.models.length, 2);
  assert.deepEqual(r.models[0], { id: 'son1k-synth', kind: 1, capabilities: [1, 2, 3], sample_rate: 48000, channels: 2,
    max_duration_seconds: 30, device: 'cpu' });
  assert.deepEqual(r.models[1].capabilities, [1, 2]); assert.equal(r.models[1].sample_rate, 32000);
  assert.deepEqual(C.decode('ListModelsResponse', C.encode('ListModelsResponse', r)), r, 'round trip (packed encoding)');
});
await check('truncated input is an error, not garbage', () => {
  const b = hex(GT.completed);
  assert.throws(() => C.decode('GenerationEvent', b.subarray(0, b.length - 1)), /truncated/);
});

// ---- grpc-web framing ----
const trailerFrame = (text) => { const t = new TextEncoder().encode(text); const f = C.frame(t); f[0] = 0x80; return f; };
const messages = [GT.accepted, GT.progress, GT.piece, GT.completed].map(hex);
const body = concat(...messages.map(C.frame), trailerFrame('grpc-status:0\r\ngrpc-message:\r\n'));

await check('frame header', () => {
  assert.equal(toHex(C.frame(hex('0a0267311029'))), '00000000060a0267311029');
});
function parseInChunks(chunks) {
  const p = new C.FrameParser(), frames = [];
  for (const c of chunks) frames.push(...p.push(c));
  assert.equal(p.pending, false, 'nothing left over');
  return frames;
}
function checkFrames(frames) {
  assert.equal(frames.length, 5);
  frames.slice(0, 4).forEach((f, i) => { assert.equal(f.trailer, false); assert.equal(toHex(f.data), toHex(messages[i])); });
  assert.equal(frames[4].trailer, true);
  assert.deepEqual(C.parseTrailers(frames[4].data), { 'grpc-status': '0', 'grpc-message': '' });
}
await check('frames split across chunk boundaries (every chunk size, every two-way split)', () => {
  for (let size = 1; size <= body.length; size++) {
    const chunks = [];
    for (let o = 0; o < body.length; o += size) chunks.push(body.subarray(o, o + size));
    checkFrames(parseInChunks(chunks));
  }
  for (let cut = 0; cut <= body.length; cut++) checkFrames(parseInChunks([body.subarray(0, cut), body.subarray(cut)]));
});
await check('a frame cut short stays pending', () => {
  const p = new C.FrameParser();
  assert.equal(p.push(body.subarray(0, 12)).length, 0);
  assert.equal(p.pending, true);
});
await check('trailer parsing and grpc-message percent-decoding', () => {
  const t = C.parseTrailers(new TextEncoder().encode('Grpc-Status: 3\r\ngrpc-message: invalid%20duration%3A%2099%20%3E%2030%20%E2%80%94%20max\r\n'));
  assert.equal(t['grpc-status'], '3');
  assert.equal(C.decodeGrpcMessage(t['grpc-message']), 'invalid duration: 99 > 30 — max');
  assert.equal(C.decodeGrpcMessage('100%'), '100%', 'bad escapes are shown raw');
});

// ---- the fetch-based call, against a fake server ----
let lastRequest = null;
function serve({ status = 200, headers = {}, chunks = [], breakAfter = false }) {
  globalThis.fetch = async (url, init) => {
    lastRequest = { url, init };
    const stream = new ReadableStream({
      start(ctrl) {
        for (const c of chunks) ctrl.enqueue(c);
        if (breakAfter) ctrl.error(new TypeError('network error')); else ctrl.close();
      },
    });
    return new Response(stream, { status, headers: { 'content-type': 'application/grpc-web+proto', ...headers } });
  };
}
const split = (u8, n) => { const out = []; for (let o = 0; o < u8.length; o += n) out.push(u8.subarray(o, o + n)); return out; };

await check('stream: events then OK trailer; request framing and headers', async () => {
  serve({ chunks: split(body, 7) });
  const got = [];
  await C.call('Generate', 'GenerateRequest', 'GenerationEvent', { prompt: 'lofi' }, { token: 'abc', onMessage: (m) => got.push(m) });
  assert.deepEqual(got.map((e) => e.event), ['accepted', 'progress', 'audio', 'completed']);
  assert.equal(lastRequest.url, '/son1k.v1.GenerationService/Generate');
  assert.equal(lastRequest.init.method, 'POST');
  assert.equal(lastRequest.init.headers['content-type'], 'application/grpc-web+proto');
  assert.equal(lastRequest.init.headers['x-grpc-web'], '1');
  assert.equal(lastRequest.init.headers.authorization, 'Bearer abc');
  assert.equal(toHex(lastRequest.init.body), '00000000060a046c6f6669');
});
await check('stream: no authorization header without a token', async () => {
  serve({ chunks: [trailerFrame('grpc-status: 0\r\n')] });
  await C.call('Watch', 'WatchRequest', 'GenerationEvent', { generation_id: 'g1' });
  assert.equal('authorization' in lastRequest.init.headers, false);
});
await check('stream: error status in the trailer frame', async () => {
  serve({ chunks: [C.frame(hex(GT.accepted)), trailerFrame('grpc-status: 3\r\ngrpc-message: invalid%20duration%3A%20-1\r\n')] });
  const got = [];
  await assert.rejects(C.call('Generate', 'GenerateRequest', 'GenerationEvent', {}, { onMessage: (m) => got.push(m) }),
    (e) => e instanceof C.GrpcError && e.code === 3 && e.codeName === 'INVALID_ARGUMENT' && e.message === 'invalid duration: -1');
  assert.equal(got.length, 1);
});
await check('trailers-only response (status in HTTP headers, empty body)', async () => {
  serve({ headers: { 'grpc-status': '16', 'grpc-message': 'missing%20token' } });
  await assert.rejects(C.call('ListModels', 'ListModelsRequest', 'ListModelsResponse', {}),
    (e) => e instanceof C.GrpcError && e.code === 16 && e.message === 'missing token');
});
await check('HTTP error without grpc-status', async () => {
  serve({ status: 503, chunks: [new TextEncoder().encode('<html>busy</html>')] });
  await assert.rejects(C.call('ListModels', 'ListModelsRequest', 'ListModelsResponse', {}),
    (e) => e instanceof C.GrpcError && e.code === 14);
});
await check('broken streams are TransportErrors', async () => {
  serve({ chunks: [C.frame(hex(GT.accepted)), body.subarray(0, 3)] });
  await assert.rejects(C.call('Watch', 'WatchRequest', 'GenerationEvent', {}), (e) => e instanceof C.TransportError && /middle/.test(e.message));
  serve({ chunks: [C.frame(hex(GT.accepted))] });
  await assert.rejects(C.call('Watch', 'WatchRequest', 'GenerationEvent', {}), (e) => e instanceof C.TransportError && /without a status/.test(e.message));
  serve({ chunks: [C.frame(hex(GT.accepted))], breakAfter: true });
  await assert.rejects(C.call('Watch', 'WatchRequest', 'GenerationEvent', {}), (e) => e instanceof C.TransportError);
  globalThis.fetch = async () => { throw new TypeError('Failed to fetch'); };
  await assert.rejects(C.call('Watch', 'WatchRequest', 'GenerationEvent', {}), (e) => e instanceof C.TransportError);
});
await check('unary ListModels', async () => {
  serve({ chunks: split(concat(C.frame(hex(GT.models)), trailerFrame('grpc-status:0\r\n')), 5) });
  const r = await C.unary('ListModels', 'ListModelsRequest', 'ListModelsResponse', {});
  assert.deepEqual(r.models.map((m) => m.id), ['son1k-synth', 'musicgen-small']);
  assert.equal(toHex(lastRequest.init.body), '0000000000', 'empty ListModelsRequest');
});

let failed = 0;
for (const [name, ok, err] of results) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}`);
  if (!ok) { failed++; console.log(`     ${err && err.stack ? err.stack.split('\n').slice(0, 4).join('\n     ') : err}`); }
}
console.log(`\n${results.length - failed}/${results.length} checks passed`);
process.exit(failed ? 1 : 0);

// The grpc-web client of son1k.v1.GenerationService (code generated from proto/), the
// bearer token it sends, and what a failed call means for the page.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { GenerationService } from "./gen/son1k/v1/son1k_pb";

const TOKEN_KEY = "son1k.token";

export function storedToken(): string {
  try {
    return localStorage.getItem(TOKEN_KEY) ?? "";
  } catch {
    return "";
  }
}

/** Whether `token` can go in an HTTP header: visible ASCII only (no spaces, no accents). */
export function validToken(token: string): boolean {
  return /^[\x21-\x7e]*$/.test(token);
}

let currentToken = validToken(storedToken().trim()) ? storedToken().trim() : "";

/** Uses `token` from now on (the caller has checked it with validToken). */
export function setToken(token: string): void {
  const v = token.trim();
  if (!validToken(v)) return;
  currentToken = v;
  try {
    localStorage.setItem(TOKEN_KEY, currentToken);
  } catch {
    /* private mode: the token lives as long as the page */
  }
}

/**
 * A short fingerprint of the token in use (32-bit FNV-1a, hex): not a secret, just enough to
 * tell whether a job saved by this tab was started with the same token.
 */
export function tokenHash(token = currentToken): string {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(token)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

const auth: Interceptor = (next) => async (req) => {
  if (currentToken) req.header.set("authorization", `Bearer ${currentToken}`);
  return next(req);
};

// Relative to the page, so a studio served under a path prefix calls that prefix.
const baseUrl = new URL(".", document.baseURI).href.replace(/\/$/, "");

export const api = createClient(
  GenerationService,
  createGrpcWebTransport({ baseUrl, useBinaryFormat: true, interceptors: [auth] }),
);

/** What went wrong with a call, in the page's terms. */
export interface Fault {
  /**
   * unavailable: the server is up but not serving (models loading, draining); client: this
   * page could not build or send the request (nothing reached the server).
   */
  kind: "auth" | "field" | "busy" | "network" | "unavailable" | "gone" | "cancelled" | "client" | "other";
  code: Code;
  /** The server's message, without the "[code]" prefix. */
  message: string;
  /** INVALID_ARGUMENT: the request field it names. */
  field?: string;
  /** RESOURCE_EXHAUSTED: seconds until a retry may be admitted. */
  retryAfter?: number;
}

/** google.rpc.BadRequest → the first field violation's field. */
function badRequestField(value: Uint8Array): string | undefined {
  try {
    const r = new BinaryReader(value);
    while (r.pos < r.len) {
      const [no, wire] = r.tag();
      if (no !== 1) {
        r.skip(wire);
        continue;
      }
      const v = new BinaryReader(r.bytes());
      while (v.pos < v.len) {
        const [fno, fwire] = v.tag();
        if (fno === 1) return v.string();
        v.skip(fwire);
      }
    }
  } catch {
    /* not what we expected: fall back to the message */
  }
  return undefined;
}

/** google.rpc.RetryInfo → its retry_delay in seconds. */
function retryInfoSeconds(value: Uint8Array): number | undefined {
  try {
    const r = new BinaryReader(value);
    while (r.pos < r.len) {
      const [no, wire] = r.tag();
      if (no !== 1) {
        r.skip(wire);
        continue;
      }
      const d = new BinaryReader(r.bytes());
      let secs = 0;
      let nanos = 0;
      while (d.pos < d.len) {
        const [fno, fwire] = d.tag();
        if (fno === 1) secs = Number(d.int64());
        else if (fno === 2) nanos = d.int32();
        else d.skip(fwire);
      }
      return secs + nanos / 1e9;
    }
  } catch {
    /* ignore */
  }
  return undefined;
}

/**
 * Whether `err` failed in this page before anything was sent: the request did not serialise
 * (a value out of its type's range), or the browser refused to build the call (a header it
 * cannot carry). A fetch that failed on the network is not one: its TypeError names no header.
 */
function clientSide(err: ConnectError): boolean {
  if (err.isWireError) return false;
  if (/^serialize (binary|json):/.test(err.rawMessage)) return true;
  const cause: unknown = err.cause;
  if (!(cause instanceof Error) || cause instanceof ConnectError) return false;
  if (cause.name === "AbortError" || cause.name === "TimeoutError") return false;
  if (cause instanceof TypeError) return /header/i.test(cause.message);
  return true; // RangeError and the like: the page's own doing
}

export function fault(e: unknown): Fault {
  const err = ConnectError.from(e);
  const message = err.rawMessage || Code[err.code] || String(err.code);
  if (clientSide(err)) return { kind: "client", code: err.code, message };
  switch (err.code) {
    case Code.Unauthenticated:
    case Code.PermissionDenied:
      return { kind: "auth", code: err.code, message };
    case Code.InvalidArgument: {
      let field: string | undefined;
      for (const d of err.details) {
        if ("type" in d && d.type === "google.rpc.BadRequest") field = badRequestField(d.value);
      }
      field ??= /^invalid ([a-z_.]+)\b/i.exec(message)?.[1];
      return { kind: "field", code: err.code, message, field };
    }
    case Code.ResourceExhausted: {
      const header = err.metadata.get("retry-after");
      let retryAfter = header === null ? NaN : Number(header);
      for (const d of err.details) {
        if (Number.isFinite(retryAfter)) break;
        if ("type" in d && d.type === "google.rpc.RetryInfo") retryAfter = retryInfoSeconds(d.value) ?? NaN;
      }
      if (!Number.isFinite(retryAfter)) {
        const m = /retry in (\d+(?:\.\d+)?) s/.exec(message);
        retryAfter = m ? Number(m[1]) : 5;
      }
      return { kind: "busy", code: err.code, message, retryAfter: Math.max(1, Math.ceil(retryAfter)) };
    }
    case Code.NotFound:
      return { kind: "gone", code: err.code, message };
    case Code.Canceled:
      return { kind: "cancelled", code: err.code, message };
    case Code.Unavailable:
      // Models loading or the server draining: worth trying again, but not a lost connection.
      return { kind: "unavailable", code: err.code, message };
    case Code.Unknown:
    case Code.Internal:
    case Code.DeadlineExceeded:
    case Code.Aborted:
      // A fetch that failed, a stream cut in the middle, a server restarting or draining.
      return { kind: "network", code: err.code, message };
    default:
      return { kind: "other", code: err.code, message };
  }
}

/** Whether trying the same stream again later may work. */
export function retryable(f: Fault): boolean {
  return f.kind === "network" || f.kind === "unavailable" || f.kind === "busy";
}

export { Code, ConnectError };

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

let currentToken = storedToken();

export function setToken(token: string): void {
  currentToken = token.trim();
  try {
    localStorage.setItem(TOKEN_KEY, currentToken);
  } catch {
    /* private mode: the token lives as long as the page */
  }
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
  kind: "auth" | "field" | "busy" | "network" | "gone" | "cancelled" | "other";
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

export function fault(e: unknown): Fault {
  const err = ConnectError.from(e);
  const message = err.rawMessage || Code[err.code] || String(err.code);
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
    case Code.Unknown:
    case Code.Unavailable:
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
  return f.kind === "network" || f.kind === "busy";
}

export { Code, ConnectError };

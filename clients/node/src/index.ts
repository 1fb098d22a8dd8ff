/**
 * A typed Node client for voxrelay's `voxrelay.v1.Speech` service.
 *
 * The messages and the service descriptor are generated from `protos/` by
 * protoc-gen-es (`make generate`); the calls go over gRPC (HTTP/2) with
 * Connect-ES's Node transport. uint64 fields (`turn`, `offsetSamples`) are
 * `bigint`; fields are camelCase in code, and `fromJson`/`toJson` read both
 * the proto's snake_case names and JSON's camelCase ones.
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  type SessionConfigSchema,
  Speech,
  type StreamRequest,
  StreamRequestSchema,
  type StreamResponse,
  SynthesizeRequestSchema,
} from "./gen/voxrelay/v1/speech_pb.js";

export * from "./gen/voxrelay/v1/speech_pb.js";

/** The initial-metadata key under which the server names the voice a session speaks with. */
export const VOICE_HEADER = "voxrelay-voice";

/** A `SessionConfig` as an object literal: camelCase fields, all optional. */
export type SessionConfigInit = MessageInitShape<typeof SessionConfigSchema>;

/** How to reach a server. */
export interface ConnectOptions {
  /** `host:port`; default `127.0.0.1:50051`. */
  target?: string;
  /** PEM CA certificate(s) of the server's certificate: connects over TLS when set. */
  tlsCa?: string | Buffer;
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
}

/** A client of the Speech service: `stream`, `synthesize` and `listVoices`. */
export type SpeechClient = Client<typeof Speech>;

/** A Speech client for `options.target` over gRPC (HTTP/2). */
export function connect(options: ConnectOptions = {}): SpeechClient {
  const target = options.target ?? "127.0.0.1:50051";
  const interceptors: Interceptor[] = [];
  if (options.token !== undefined) {
    const token = options.token;
    interceptors.push((next) => async (request) => {
      request.header.set("authorization", `Bearer ${token}`);
      return next(request);
    });
  }
  const transport = createGrpcTransport({
    baseUrl: `${options.tlsCa === undefined ? "http" : "https"}://${target}`,
    nodeOptions:
      options.tlsCa === undefined ? undefined : { ca: options.tlsCa },
    interceptors,
  });
  return createClient(Speech, transport);
}

/**
 * One `Stream` call: send text as it is produced, iterate the ordered responses.
 *
 * `send`, `turnDone`, `cancel` and `close` queue requests and return at once;
 * iterate the session (once) for every `StreamResponse` in the server's order:
 * per turn `TURN_STARTED`, its audio, `TURN_ENDED`, then `SESSION_ENDED`. A failed
 * call yields the server's `error` message and `SESSION_ENDED`, then the
 * iteration throws a `ConnectError` with the same code and message.
 */
export class Session implements AsyncIterable<StreamResponse> {
  /**
   * The voice the server chose (from `voice`, `languageCode` or its default), from
   * the call's initial metadata; "" when the call ended before the server named one
   * (a bad configuration). Settles once the server's headers or its end arrive.
   */
  readonly voice: Promise<string>;
  private named: (voice: string) => void = () => {};
  private readonly queue: StreamRequest[] = [];
  private closed = false;
  private wake: (() => void) | undefined;
  private readonly responses: AsyncIterable<StreamResponse>;

  constructor(
    client: SpeechClient,
    config: SessionConfigInit = {},
    options: CallOptions = {},
  ) {
    this.voice = new Promise((resolve) => (this.named = resolve));
    this.push(
      create(StreamRequestSchema, {
        request: { case: "config", value: config },
      }),
    );
    this.responses = client.stream(this.requests(), {
      ...options,
      onHeader: (headers) => {
        this.named(headers.get(VOICE_HEADER) ?? "");
        options.onHeader?.(headers);
      },
    });
  }

  /** Queue the next chunk of the current turn's text (whitespace is kept). */
  send(text: string): void {
    this.push(
      create(StreamRequestSchema, { request: { case: "text", value: text } }),
    );
  }

  /** The current turn is complete: speak what is buffered and end the turn. */
  turnDone(): void {
    this.push(
      create(StreamRequestSchema, { request: { case: "turnDone", value: {} } }),
    );
  }

  /** Barge-in: drop everything not yet delivered; affected turns end cancelled. */
  cancel(): void {
    this.push(
      create(StreamRequestSchema, { request: { case: "cancel", value: {} } }),
    );
  }

  /** No more requests (half-close): the server finishes every turn, then ends the call. */
  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamResponse> {
    try {
      yield* this.responses;
    } finally {
      this.named(""); // no effect once the headers named the voice
    }
  }

  private push(request: StreamRequest): void {
    if (this.closed) {
      throw new Error("the session is closed: open a new one to send more");
    }
    this.queue.push(request);
    this.wake?.();
  }

  private async *requests(): AsyncIterable<StreamRequest> {
    for (;;) {
      const request = this.queue.shift();
      if (request !== undefined) {
        yield request;
      } else if (this.closed) {
        return;
      } else {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    }
  }
}

/** Open a `Stream` session with `config` (see `Session`). */
export function openSession(
  client: SpeechClient,
  config: SessionConfigInit = {},
  options: CallOptions = {},
): Session {
  return new Session(client, config, options);
}

/** One whole text spoken as one turn (`Synthesize`): the same ordered responses. */
export function synthesize(
  client: SpeechClient,
  text: string,
  config: SessionConfigInit = {},
  options: CallOptions = {},
): AsyncIterable<StreamResponse> {
  return client.synthesize(
    create(SynthesizeRequestSchema, { config, text }),
    options,
  );
}

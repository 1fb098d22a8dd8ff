/**
 * Speak two turns through a voxrelay server and write them to a WAV file.
 *
 *   node dist/examples/speak.js [--target HOST:PORT] [--config JSON] [--out FILE.wav]
 *                               [--ca CA.pem] [--token TOKEN (or VOXRELAY_TOKEN)]
 *
 * `--config` is a `SessionConfig` in the proto's JSON form, snake_case or
 * camelCase (`{"language_code": "de", "audio_format": {"sample_rate_hz": 16000}}`).
 * Prints one JSON line per response, in the order they arrived, then a summary.
 */

import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { create, fromJsonString, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import {
  AudioEncoding,
  AudioFormatSchema,
  connect,
  openSession,
  type SessionConfig,
  SessionConfigSchema,
  StreamResponseSchema,
} from "../src/index.js";

const { values } = parseArgs({
  options: {
    target: { type: "string", default: "127.0.0.1:50051" },
    config: { type: "string", default: "{}" },
    out: { type: "string", default: "speak.wav" },
    ca: { type: "string" }, // PEM file of the server's CA: connects over TLS
    token: { type: "string", default: process.env.VOXRELAY_TOKEN },
  },
});

// fromJson accepts both `audio_format` and `audioFormat`, and says which field
// it does not know instead of dropping it.
let config: SessionConfig;
try {
  config = fromJsonString(SessionConfigSchema, values.config!);
} catch (error) {
  console.error(`voxrelay: --config: ${(error as Error).message}`);
  process.exit(2);
}
config.audioFormat = create(AudioFormatSchema, {
  sampleRateHz: config.audioFormat?.sampleRateHz ?? 0,
  encoding: AudioEncoding.PCM_S16LE, // the WAV file below holds 16-bit PCM
});

const client = connect({
  target: values.target,
  tlsCa: values.ca === undefined ? undefined : readFileSync(values.ca),
  token: values.token,
});
const session = openSession(client, config);
session.send("Hello there, ");
session.send("how are you today? ");
session.send("I hope you are well. ");
session.turnDone();
session.send("This is the second turn. ");
session.close(); // half-close: both turns are spoken, then the session ends

const pcm: Uint8Array[] = [];
let sampleRateHz = 0;
try {
  await speak();
} catch (error) {
  // The server's status: its code and message (the same as its `error` message).
  const failure = ConnectError.from(error);
  console.error(`voxrelay: ${Code[failure.code]}: ${failure.rawMessage}`);
  process.exit(1);
}

async function speak(): Promise<void> {
  for await (const response of session) {
    if (response.response.case === "audio") {
      const chunk = response.response.value;
      pcm.push(chunk.data);
      sampleRateHz = chunk.sampleRateHz;
      // uint64 fields are bigint: print them as the proto's JSON does, as strings.
      console.log(
        JSON.stringify({
          audio: {
            turn: chunk.turn.toString(),
            segment: chunk.segment,
            offset_samples: chunk.offsetSamples.toString(),
            sample_rate_hz: chunk.sampleRateHz,
            bytes: chunk.data.length,
          },
        }),
      );
    } else {
      // toJson renders uint64 as strings ("turn": "1") and enums by name.
      console.log(JSON.stringify(toJson(StreamResponseSchema, response)));
    }
  }
}

const data = Buffer.concat(pcm);
writeFileSync(
  values.out!,
  Buffer.concat([wavHeader(data.length, sampleRateHz), data]),
);
console.log(
  JSON.stringify({
    summary: {
      voice: await session.voice,
      samples: data.length / 2,
      sample_rate_hz: sampleRateHz,
    },
  }),
);

/** The 44-byte header of a mono 16-bit PCM WAV file. */
function wavHeader(dataBytes: number, rateHz: number): Buffer {
  const header = Buffer.alloc(44);
  header.write("RIFF", 0);
  header.writeUInt32LE(36 + dataBytes, 4);
  header.write("WAVEfmt ", 8);
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rateHz, 24);
  header.writeUInt32LE(rateHz * 2, 28); // bytes per second
  header.writeUInt16LE(2, 32); // bytes per frame
  header.writeUInt16LE(16, 34); // bits per sample
  header.write("data", 36);
  header.writeUInt32LE(dataBytes, 40);
  return header;
}

// The postMessage baselines of the bench: a guest-like producer in this thread keeps `inflight` frames of
// `size` bytes in flight to a worker. 'transfer' moves each ArrayBuffer there and gets it back (ownership
// moves, nothing is copied); 'copy' posts the bytes (the structured clone copies them) and reuses its buffer
// when the worker answers with the frame's id. Both write the whole frame before sending it, as a guest writes
// its frames into its pages.
import { MessageChannel, Worker } from 'node:worker_threads';
import { WindowCounter, rateRange, type RateRange } from './rates.js';

/** How a baseline moves the bytes. */
export type PostMessageMode = 'transfer' | 'copy';

/** Options of one baseline run. */
export interface PostMessageRunOptions {
  readonly mode: PostMessageMode;
  readonly size: number;
  /** Measurement time after the warm-up, ms. */
  readonly durationMs: number;
  /** Frames in flight (default 32, as the TX path's batches). */
  readonly inflight?: number;
  /** Rate window, ms (default 50). */
  readonly windowMs?: number;
  /** Warm-up windows skipped (default 4). */
  readonly warmupWindows?: number;
}

/** What one baseline run measured. */
export interface PostMessageResult {
  readonly mode: PostMessageMode;
  readonly size: number;
  /** Round trips per second (frame out, buffer or ack back), per window. */
  readonly pps: RateRange;
  readonly packets: number;
  /** Sends that left this thread's buffer detached (moved, not copied): every send for 'transfer', none for 'copy'. */
  readonly detached: number;
  readonly sends: number;
}

/** Runs one baseline with a fresh worker; the worker is gone when the promise settles. */
export async function runPostMessage(opts: PostMessageRunOptions): Promise<PostMessageResult> {
  const inflight = opts.inflight ?? 32;
  const windowMs = opts.windowMs ?? 50;
  const warmup = opts.warmupWindows ?? 4;
  if (!Number.isInteger(opts.size) || opts.size < 1) throw new RangeError(`size must be a positive integer but got ${opts.size}`);
  const counter = new WindowCounter(windowMs, warmup + Math.ceil(opts.durationMs / windowMs) + 1);
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(new URL('./postmessage-worker.js', import.meta.url), {
    workerData: { port: port2, mode: opts.mode },
    transferList: [port2],
  });
  const buffers: Uint8Array[] = [];
  for (let i = 0; i < inflight; i++) buffers.push(new Uint8Array(opts.size));
  // The frame every send writes (a stand-in for the guest's headers and payload).
  const frame = new Uint8Array(opts.size);
  for (let i = 0; i < frame.length; i++) frame[i] = (i * 251) & 0xff;
  let packets = 0;
  let seq = 0;
  let detached = 0;
  const send = (id: number): void => {
    const b = buffers[id]!;
    // Write the frame, with changing bytes so nothing can be cached.
    b.set(frame);
    b[0] = seq & 0xff;
    b[b.length - 1] = (seq >>> 8) & 0xff;
    seq++;
    if (opts.mode === 'transfer') port1.postMessage({ id, buf: b.buffer }, [b.buffer as ArrayBuffer]);
    else port1.postMessage({ id, buf: b });
    if (b.byteLength === 0) detached++;
  };
  try {
    await new Promise<void>((resolve, reject) => {
      worker.once('error', reject);
      worker.once('online', () => resolve());
    });
    const finished = new Promise<void>((resolve) => {
      let stopping = false;
      port1.on('message', (m: { id: number; buf: ArrayBuffer } | number) => {
        const now = performance.now();
        let id: number;
        if (typeof m === 'number') {
          id = m;
        } else {
          id = m.id;
          buffers[id] = new Uint8Array(m.buf);
        }
        packets++;
        if (!counter.add(now) || stopping) {
          stopping = true;
          return;
        }
        send(id);
      });
      const check = setInterval(() => {
        if (stopping || counter.done(performance.now())) {
          clearInterval(check);
          stopping = true;
          resolve();
        }
      }, windowMs);
    });
    counter.start(performance.now());
    for (let i = 0; i < inflight; i++) send(i);
    await finished;
  } finally {
    port1.postMessage('stop');
    port1.close();
    await worker.terminate();
  }
  return { mode: opts.mode, size: opts.size, pps: rateRange(counter.rates(warmup)), packets, detached, sends: seq };
}

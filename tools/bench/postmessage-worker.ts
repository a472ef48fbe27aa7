// The far end of the postMessage baselines: receives frames on a port and either transfers each buffer back
// ('transfer') or answers with its id after the structured clone copied it here ('copy'). Like netback, it
// reads the frame's first 128 bytes (the header copy) before answering.
import { parentPort, workerData } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';

interface Init {
  readonly port: MessagePort;
  readonly mode: 'transfer' | 'copy';
}

const HEADER = new Uint8Array(128);
const { port, mode } = workerData as Init;
let sink = 0;

port.on('message', (m: { id: number; buf: ArrayBuffer | Uint8Array } | 'stop') => {
  if (m === 'stop') {
    port.close();
    parentPort?.postMessage(sink);
    return;
  }
  const bytes = m.buf instanceof ArrayBuffer ? new Uint8Array(m.buf) : m.buf;
  const n = bytes.length < 128 ? bytes.length : 128;
  HEADER.set(bytes.subarray(0, n));
  sink = (sink + HEADER[0]! + bytes[bytes.length - 1]!) | 0;
  if (mode === 'transfer') port.postMessage(m, [m.buf as ArrayBuffer]);
  else port.postMessage(m.id);
});

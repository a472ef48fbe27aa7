// A real frontend worker and backend worker exchange seeded random batches of netif TX requests and
// responses over one shared ring page for ~100 laps, starting at 2^32 - 300 so the indices wrap early,
// with canary pages around the ring and sequence checks on both sides.

import test from 'ava';
import { Worker } from 'node:worker_threads';
import { kGate, kControlWords } from './fixtures/ring-actors.js';
import type { ActorConfig, ActorReport } from './fixtures/ring-actors.js';
import { NET_TX_RING_SIZE, XEN_NETIF_TX_SLOT_SIZE } from '../../shared/netif.js';
import { kReqProd, kRspProd, sharedRingInit, SRING_HEADER_SIZE, XEN_PAGE_SIZE } from '../../shared/ring.js';

const CANARY = 0xc3;
const LAPS = 100;
const START = 2 ** 32 - 300;

function report(worker: Worker): Promise<ActorReport> {
  return new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`worker exited with code ${code} before reporting`)));
  });
}

for (const seed of [0x5eed, 0xc0ffee]) {
  test(`frontend and backend workers: ${LAPS} laps from 2^32 - 300, seed ${seed}`, async (t) => {
    // Page 0: canary; page 1: the ring; page 2: canary; page 3: control words.
    const sab = new SharedArrayBuffer(4 * XEN_PAGE_SIZE);
    const bytes = new Uint8Array(sab);
    bytes.fill(CANARY, 0, 3 * XEN_PAGE_SIZE);
    const ringOffset = XEN_PAGE_SIZE;
    const ctlOffset = 3 * XEN_PAGE_SIZE;
    sharedRingInit(sab, ringOffset, START);
    const ringEnd = ringOffset + SRING_HEADER_SIZE + NET_TX_RING_SIZE * XEN_NETIF_TX_SLOT_SIZE;

    const cfg: ActorConfig = {
      sab,
      ringOffset,
      ctlOffset,
      start: START,
      total: LAPS * NET_TX_RING_SIZE,
      seed,
      waitTimeoutMs: 5000,
    };
    const frontend = new Worker(new URL('./fixtures/ring-producer.js', import.meta.url), { workerData: cfg });
    t.teardown(() => frontend.terminate());
    const backend = new Worker(new URL('./fixtures/ring-consumer.js', import.meta.url), { workerData: cfg });
    t.teardown(() => backend.terminate());
    const reports = Promise.all([report(frontend), report(backend)]);

    // Open the start gate once both threads run, so they start contending together.
    await Promise.all([frontend, backend].map((w) => new Promise((resolve) => w.once('online', resolve))));
    const ctl = new Int32Array(sab, ctlOffset, kControlWords);
    Atomics.store(ctl, kGate, 1);
    Atomics.notify(ctl, kGate);

    const [front, back] = await reports;
    t.log(`seed ${seed}: frontend ${JSON.stringify(front)}`);
    t.log(`seed ${seed}: backend ${JSON.stringify(back)}`);
    t.deepEqual([front.error, back.error], ['', '']);
    t.deepEqual([front.items, back.items], [cfg.total, cfg.total]);

    const words = new Int32Array(sab, ringOffset, 4);
    const end = (START + cfg.total) >>> 0;
    t.deepEqual([Atomics.load(words, kReqProd) >>> 0, Atomics.load(words, kRspProd) >>> 0], [end, end]);
    t.true(bytes.subarray(0, ringOffset).every((b) => b === CANARY), 'canary page before the ring');
    t.true(bytes.subarray(ringEnd, ctlOffset).every((b) => b === CANARY), 'canaries after the last slot');
    t.true(bytes.subarray(ringOffset + 16, ringOffset + SRING_HEADER_SIZE).every((b) => b === 0), 'pvt and pad');
  });
}

// The frontend side of the vif handshake through a real xenstore, against a minimal netback built from the
// Linux reactions (shared/xenbus.ts netbackFrontendChanged) that maps the published rings with the scripted backend.
import test from 'ava';
import { XenStore } from '../../shared/xenstore.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { XsClient, XsResult } from '../../shared/xenstore-protocol.js';
import { ok, type Result } from '../../shared/result.js';
import {
  VifKey,
  XenbusDevice,
  XenbusStateClosed,
  XenbusStateClosing,
  XenbusStateConnected,
  XenbusStateInitWait,
  netbackFrontendChanged,
  toolstackAddVif,
  toolstackCreateDomain,
  vifBackendPath,
  vifFrontendPath,
  type XenbusState,
} from '../../shared/xenbus.js';
import { NetfrontXenbus, netfrontKeys, readNetbackFeatures } from '../../frontend/netfront-xenbus.js';
import type { NetbackFeatures } from '../../frontend/netfront.js';
import { TxFrame } from '../../frontend/traffic.js';
import { BE, FE, ScriptedBackend, makeGuest, type GuestRig } from './scripted-backend.js';

const FE_PATH = vifFrontendPath(FE, 0);
const BE_PATH = vifBackendPath(BE, FE, 0);

const GOOD_FEATURES: [string, string][] = [
  [VifKey.featureSg, '1'],
  [VifKey.featureGsoTcpv4, '1'],
  [VifKey.featureRxCopy, '1'],
  [VifKey.multiQueueMaxQueues, '4'],
  [VifKey.featureSplitEventChannels, '1'],
];

function must<T>(r: { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** A minimal netback: advertises features, goes InitWait, follows the frontend; connect maps the rings. */
class MiniNetback {
  backend: ScriptedBackend | null = null;
  readonly steps: string[] = [];
  frozen = false;
  connectedKeys: Record<string, string> = {};

  private constructor(
    readonly g: GuestRig,
    readonly client: XsClient,
    readonly dev: XenbusDevice,
  ) {}

  static async start(g: GuestRig, client: XsClient, features: readonly [string, string][]): Promise<MiniNetback> {
    for (const [k, v] of features) must(await client.write(`${BE_PATH}/${k}`, v));
    const dev = must(await XenbusDevice.open(client, 'backend', BE_PATH));
    const nb = new MiniNetback(g, client, dev);
    dev.onOtherendChanged(async (state, vanished) => {
      if (nb.frozen) return;
      const online = await client.read(`${BE_PATH}/${VifKey.online}`);
      const r = netbackFrontendChanged(state, online.ok && online.value === '1', vanished);
      if (r.target !== null) must(await dev.setBackendState(r.target, nb.hook));
    });
    must(await dev.setBackendState(XenbusStateInitWait, nb.hook));
    return nb;
  }

  readonly hook = async (from: XenbusState, to: XenbusState): Promise<Result<void>> => {
    this.steps.push(`${from}->${to}`);
    if (to === XenbusStateConnected) {
      const keys: Record<string, string> = {};
      for (const k of [VifKey.txRingRef, VifKey.rxRingRef, VifKey.eventChannel, VifKey.requestRxCopy, VifKey.featureRxNotify, VifKey.featureSg, VifKey.featureGsoTcpv4]) {
        keys[k] = must(await this.client.read(`${FE_PATH}/${k}`));
      }
      this.connectedKeys = keys;
      this.backend = new ScriptedBackend(this.g, {
        txRingRef: Number(keys[VifKey.txRingRef]),
        rxRingRef: Number(keys[VifKey.rxRingRef]),
        eventChannel: Number(keys[VifKey.eventChannel]),
      });
    }
    if (from === XenbusStateConnected) {
      this.backend?.close();
      this.backend = null;
    }
    return ok(undefined);
  };
}

interface World {
  store: XenStore;
  dom0: XsClient;
  fe: XsClient;
  g: GuestRig;
}

async function world(): Promise<World> {
  const store = new XenStore();
  const dom0 = XenstoreClient.local(must(store.connect(0)));
  must(await toolstackCreateDomain(store, dom0, FE));
  must(await toolstackAddVif(dom0, { frontendDomid: FE, backendDomid: BE, devid: 0, mac: '02:00:00:00:00:11' }));
  const fe = XenstoreClient.local(must(store.connect(FE)));
  return { store, dom0, fe, g: makeGuest() };
}

async function open(w: World, client: XsClient = w.fe, seen?: NetbackFeatures[]): Promise<NetfrontXenbus> {
  return must(
    await NetfrontXenbus.open({
      client,
      nodename: FE_PATH,
      netfront: w.g.nf,
      clock: w.g.clock,
      onConnected: (f) => seen?.push(f),
    }),
  );
}

test('handshake: features read, rings published in Linux key names, both ends Connected, data flows', async (t) => {
  t.timeout(5000);
  const w = await world();
  const seen: NetbackFeatures[] = [];
  const fx = await open(w, w.fe, seen);
  const nb = await MiniNetback.start(w.g, w.dom0, GOOD_FEATURES);
  t.true(await fx.waitConnected());
  t.deepEqual(seen, [{ sg: true, gsoTcpv4: true, rxCopy: true, multiQueueMaxQueues: 4, splitEventChannels: true }]);
  t.is(fx.connects, 1);
  const rings = { txRingRef: Number(nb.connectedKeys[VifKey.txRingRef]), rxRingRef: Number(nb.connectedKeys[VifKey.rxRingRef]), eventChannel: w.g.nf.eventChannel };
  t.deepEqual(Object.entries(nb.connectedKeys), netfrontKeys(rings));
  t.deepEqual(nb.steps, ['1->2', '2->4']);
  t.is(w.g.nf.xmit(new TxFrame().setUdp({ srcMac: 1, dstMac: 2, saddr: 3, daddr: 4, sport: 5, dport: 6 }, 1, 0, 100, false)), 'sent');
  t.is(nb.backend!.readTx().length, 1);
  t.is(nb.backend!.takeRx(), 256);
});

test('the keys go in one transaction, retried when the commit answers EAGAIN', async (t) => {
  t.timeout(5000);
  const w = await world();
  const writes = new Map<number, string[]>();
  let failed = 0;
  let committed: string[] = [];
  const racy: XsClient = Object.create(w.fe) as XsClient;
  racy.write = async (path: string, value: string, tx?: number): Promise<XsResult<void>> => {
    if (tx !== undefined) writes.set(tx, [...(writes.get(tx) ?? []), path.slice(FE_PATH.length + 1)]);
    return w.fe.write(path, value, tx);
  };
  racy.transactionEnd = async (tx: number, commit: boolean): Promise<XsResult<void>> => {
    const keys = writes.get(tx) ?? [];
    if (commit && keys.includes(VifKey.txRingRef)) {
      if (failed === 0) {
        failed++;
        await w.fe.transactionEnd(tx, false);
        return { ok: false, error: 'EAGAIN' };
      }
      committed = keys;
    }
    return w.fe.transactionEnd(tx, commit);
  };
  const fx = await open(w, racy);
  await MiniNetback.start(w.g, w.dom0, GOOD_FEATURES);
  t.true(await fx.waitConnected());
  t.is(failed, 1);
  t.deepEqual(committed, netfrontKeys({ txRingRef: 0, rxRingRef: 0, eventChannel: 0 }).map(([k]) => k), 'every key in the one committed transaction');
  t.is(must(await w.dom0.read(`${FE_PATH}/${VifKey.requestRxCopy}`)), '1');
});

for (const c of [
  { name: 'no feature-rx-copy', features: GOOD_FEATURES.filter(([k]) => k !== VifKey.featureRxCopy), error: 'backend does not support copying receive path' },
  {
    name: 'a garbage feature value',
    features: [...GOOD_FEATURES.filter(([k]) => k !== VifKey.featureSg), [VifKey.featureSg, 'yes'] as [string, string]],
    error: 'feature-sg is corrupt: expected an integer 0 <= x <= 4294967295 but got "yes"',
  },
]) {
  test(`a backend with ${c.name}: the frontend reports it, keeps no rings, and goes Closing`, async (t) => {
    t.timeout(5000);
    const w = await world();
    const fx = await open(w);
    await MiniNetback.start(w.g, w.dom0, c.features);
    await fx.device.waitForState(XenbusStateClosing);
    t.is(fx.lastError, c.error);
    t.is(w.g.nf.eventChannel, -1);
    t.false(w.g.nf.connected);
    t.deepEqual(w.g.nf.audit(), { total: w.g.frames.length, pool: w.g.frames.length, rings: 0, tx: 0, rx: 0, stuck: 0 });
    t.is((await w.dom0.read(`${FE_PATH}/${VifKey.txRingRef}`)).ok, false, 'nothing published');
  });
}

test('readNetbackFeatures: missing keys read as 0 (one queue), as xenbus_read_unsigned does', async (t) => {
  const w = await world();
  t.deepEqual(must(await readNetbackFeatures(w.fe, BE_PATH)), { sg: false, gsoTcpv4: false, rxCopy: false, multiQueueMaxQueues: 1, splitEventChannels: false });
});

test('the backend closes: the frontend tears down and reclaims, goes Closed; reconnect connects again with fresh rings', async (t) => {
  t.timeout(5000);
  const w = await world();
  let downs = 0;
  const fx = must(await NetfrontXenbus.open({ client: w.fe, nodename: FE_PATH, netfront: w.g.nf, clock: w.g.clock, onDisconnected: () => downs++ }));
  const nb = await MiniNetback.start(w.g, w.dom0, GOOD_FEATURES);
  t.true(await fx.waitConnected());
  const frame = new TxFrame().setUdp({ srcMac: 1, dstMac: 2, saddr: 3, daddr: 4, sport: 5, dport: 6 }, 1, 0, 100, false);
  w.g.nf.xmit(frame);
  nb.backend!.readTx();
  must(await nb.dev.setBackendState(XenbusStateClosing, nb.hook)); // the backend goes away: it unmaps everything first
  await fx.device.waitForState(XenbusStateClosed);
  t.is(downs, 1);
  t.false(w.g.nf.connected);
  t.is(w.g.nf.grantsOutstanding, 0, 'the unmapped TX grant was reclaimed at disconnect');
  t.is(w.g.nf.stats.grantsReclaimed, 1);
  t.deepEqual(w.g.nf.audit(), { total: w.g.frames.length, pool: w.g.frames.length, rings: 0, tx: 0, rx: 0, stuck: 0 });
  await nb.dev.waitForState(XenbusStateClosed);
  must(await fx.reconnect());
  t.true(await fx.waitConnected());
  t.is(fx.connects, 2);
  t.is(w.g.nf.xmit(frame), 'sent');
  t.is(nb.backend!.readTx().length, 1);
  t.false(w.g.nf.broken);
});

test('orderly close: Closing, the backend closes, Closed, everything reclaimed', async (t) => {
  t.timeout(5000);
  const w = await world();
  const fx = await open(w);
  const nb = await MiniNetback.start(w.g, w.dom0, GOOD_FEATURES);
  t.true(await fx.waitConnected());
  t.deepEqual(await fx.close(), ok(undefined));
  t.is(fx.state, XenbusStateClosed);
  t.is(nb.dev.state, XenbusStateClosed);
  t.deepEqual(nb.steps, ['1->2', '2->4', '4->5', '5->6']);
  t.false(w.g.nf.connected);
  t.is(w.g.nf.audit().pool, w.g.frames.length);
});

test('orderly close against a backend that never answers gives up after the timeout and says so', async (t) => {
  t.timeout(5000);
  const w = await world();
  const fx = await open(w);
  const nb = await MiniNetback.start(w.g, w.dom0, GOOD_FEATURES);
  t.true(await fx.waitConnected());
  nb.frozen = true;
  let done = false;
  const p = fx.close(1000).then((r) => {
    done = true;
    return r;
  });
  for (let i = 0; i < 200 && !done; i++) {
    await new Promise((r) => setImmediate(r));
    w.g.clock.advance(1000);
  }
  t.deepEqual(await p, { ok: false, error: 'backend did not close within 1000 ms: it is Connected' });
  t.is(fx.state, XenbusStateClosed);
  t.is(fx.lastError, 'backend did not close within 1000 ms: it is Connected');
  t.true(w.g.nf.audit().stuck > 0, 'the silent backend still maps the rings: kept aside, not reused');
});

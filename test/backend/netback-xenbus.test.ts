import test from 'ava';
import { VirtualClock } from '../../shared/clock.js';
import { EvtchnHost } from '../../shared/evtchn.js';
import { GrantTable } from '../../shared/gnttab.js';
import { GrantMapper } from '../../shared/gnttab-mapper.js';
import { GuestMemory, XEN_PAGE_SIZE } from '../../shared/memory.js';
import { TxRequest, TxResponse, XEN_NETIF_TX_SLOT_SIZE } from '../../shared/netif.js';
import { FrontRing, kReqProd, sharedRingInit } from '../../shared/ring.js';
import {
  VifKey,
  XenbusDevice,
  XenbusStateClosed,
  XenbusStateClosing,
  XenbusStateConnected,
  XenbusStateInitWait,
  toolstackAddVif,
  toolstackCreateDomain,
  toolstackDestroyDomain,
  vifBackendPath,
  vifFrontendPath,
  writeXenbusKeys,
} from '../../shared/xenbus.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { XsClient, XsResult } from '../../shared/xenstore-protocol.js';
import { XenStore } from '../../shared/xenstore.js';
import { NetbackXenbus } from '../../backend/netback-xenbus.js';
import { rusty } from '../../backend/release.js';
import { SkbContext, kfreeSkb, type SkBuff } from '../../backend/skbuff.js';
import { Xenvif } from '../../backend/xenvif.js';
import { NoticeSink } from './netback-rig.js';

const FE = 1;
const BE = 0;
const MAC = '00:16:3e:00:00:01';

function must<T>(r: XsResult<T> | { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) throw new Error(`unexpected failure: ${r.error}`);
  return r.value;
}

/** Lets xenstore watch events (microtasks) and listeners run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 50; i++) await new Promise<void>((r) => setImmediate(r));
}

interface World {
  store: XenStore;
  dom0: XsClient;
  dom1: XsClient;
  clock: VirtualClock;
  evtchn: EvtchnHost;
  table: GrantTable;
  mem: GuestMemory;
  mapper: GrantMapper;
  ctx: SkbContext;
  held: SkBuff[];
  notices: NoticeSink;
  logs: string[];
  fePath: string;
  bePath: string;
  be: NetbackXenbus;
  fdev: XenbusDevice;
}

async function world(opts: { hotplug?: boolean } = {}): Promise<World> {
  const store = new XenStore();
  const dom0 = XenstoreClient.local(must(store.connect(0)));
  must(await toolstackCreateDomain(store, dom0, FE));
  must(await toolstackAddVif(dom0, { frontendDomid: FE, backendDomid: BE, devid: 0, mac: MAC, hotplugConnected: opts.hotplug ?? true }));
  const dom1 = XenstoreClient.local(must(store.connect(FE)));
  const clock = new VirtualClock();
  const evtchn = EvtchnHost.create({ maxDomains: 2, nrPorts: 64 });
  const table = new GrantTable({ domid: FE, nrEntries: 256, clock });
  const mem = GuestMemory.create(64);
  const mapper = new GrantMapper({ domid: BE });
  mapper.addDomain(FE, table.entries.sab, mem.sab);
  const ctx = new SkbContext({ design: rusty });
  const held: SkBuff[] = [];
  const notices = new NoticeSink();
  const logs: string[] = [];
  const fePath = vifFrontendPath(FE, 0);
  const bePath = vifBackendPath(BE, FE, 0);
  const be = must(
    await NetbackXenbus.probe({
      client: dom0,
      nodename: bePath,
      mapper,
      evtchn: evtchn.domain(BE),
      clock,
      log: (level, m) => logs.push(`${level}: ${m}`),
      grantReturnPort: notices,
      createVif: (domid, handle) => {
        const vif = new Xenvif({ domid, handle, ctx, mapper, clock, log: (level, m) => logs.push(`${level}: ${m}`) });
        vif.setInput((skb) => held.push(skb));
        return vif;
      },
    }),
  );
  const fdev = must(await XenbusDevice.open(dom1, 'frontend', fePath));
  await settle();
  return { store, dom0, dom1, clock, evtchn, table, mem, mapper, ctx, held, notices, logs, fePath, bePath, be, fdev };
}

interface FrontendSetup {
  tx: FrontRing;
  port: number;
  txRef: number;
  rxRef: number;
}

/** talk_to_netback, scripted: two ring pages, one event channel, the keys; `keys` edits what is written. */
async function frontConnect(w: World, edit: (keys: [string, string][], f: FrontendSetup) => [string, string][] = (k) => k): Promise<FrontendSetup> {
  sharedRingInit(w.mem.sab, 0);
  sharedRingInit(w.mem.sab, XEN_PAGE_SIZE);
  const txRef = w.table.grantForeignAccess(BE, 0, false);
  const rxRef = w.table.grantForeignAccess(BE, 1, false);
  const port = must(w.evtchn.domain(FE).allocUnbound(BE));
  const f: FrontendSetup = { tx: new FrontRing(w.mem.sab, 0, XEN_NETIF_TX_SLOT_SIZE), port, txRef, rxRef };
  const keys: [string, string][] = [
    [VifKey.txRingRef, String(txRef)],
    [VifKey.rxRingRef, String(rxRef)],
    [VifKey.eventChannel, String(port)],
    [VifKey.requestRxCopy, '1'],
    [VifKey.featureRxNotify, '1'],
    [VifKey.featureSg, '1'],
    [VifKey.featureGsoTcpv4, '1'],
  ];
  must(await writeXenbusKeys(w.dom1, w.fePath, edit(keys, f)));
  must(await w.fdev.switchState(XenbusStateConnected));
  await settle();
  return f;
}

test('probe advertises the features and goes InitWait when the frontend initialises', async (t) => {
  const w = await world();
  t.is(w.be.state, XenbusStateInitWait);
  for (const [k, v] of [
    ['feature-sg', '1'],
    ['feature-gso-tcpv4', '1'],
    ['feature-gso-tcpv6', '1'],
    ['feature-rx-copy', '1'],
    ['feature-rx-flip', '0'],
    ['feature-multicast-control', '1'],
    ['feature-split-event-channels', '1'],
    ['multi-queue-max-queues', '1'],
  ] as const) {
    t.deepEqual(await w.dom0.read(`${w.bePath}/${k}`), { ok: true, value: v }, k);
  }
  t.is(w.be.vif!.name, 'vif1.0');
});

test('connect maps the rings, binds the event channel, goes Connected; a packet flows and the guest is notified', async (t) => {
  const w = await world();
  const f = await frontConnect(w);
  t.is(w.be.state, XenbusStateConnected);
  t.is(w.be.lastError, null);
  const vif = w.be.vif!;
  t.is(vif.state, 'connected');
  t.true(vif.features.sg);
  t.true(vif.features.tso);
  t.is(w.mapper.stats().liveHandles, 2, 'the two ring pages');
  // A packet of one 500-byte slot.
  const [gref] = [w.table.grantForeignAccess(BE, 10, true)];
  w.mem.frame(10).fill(0x42, 0, 500);
  f.tx.putRequest(TxRequest, { gref, offset: 0, flags: 0, id: 7, size: 500 });
  t.true(f.tx.pushRequestsAndCheckNotify());
  t.is(w.evtchn.domain(FE).notify(f.port), 0, 'the frontend kicks the backend');
  w.evtchn.domain(BE).dispatch();
  t.true(vif.hasWork());
  t.is(vif.txAction(), 1);
  t.is(w.held.length, 1);
  const before = w.evtchn.domain(FE).counters().raised;
  kfreeSkb(w.held.pop()!);
  t.is(vif.flushDealloc(), 1);
  t.is(w.evtchn.domain(FE).counters().raised - before, 1, 'the response notified the frontend');
  t.is(f.tx.unconsumedResponses(), 1);
  t.deepEqual(f.tx.copyResponse(f.tx.rspCons, TxResponse, TxResponse.create()), { id: 7, status: 0 });
  t.deepEqual(w.notices.grefs(), [gref]);
});

test('frontend Closing: the backend waits for the stack to give back every grant before Closing, then Closed', async (t) => {
  const w = await world();
  const f = await frontConnect(w);
  const vif = w.be.vif!;
  const gref = w.table.grantForeignAccess(BE, 10, true);
  f.tx.putRequest(TxRequest, { gref, offset: 0, flags: 0, id: 1, size: 3000 });
  f.tx.pushRequests();
  vif.txAction();
  t.is(w.held.length, 1);
  must(await w.fdev.switchState(XenbusStateClosing));
  await settle();
  t.is(vif.state, 'disconnecting');
  t.is(w.be.state, XenbusStateConnected, 'Closing is written only after the disconnect finished');
  t.deepEqual(w.be.stillMapped(), [{ pendingIdx: 0, gref, state: 'inflight' }]);
  w.clock.advance(1000);
  t.true(w.logs.some((l) => l.includes(`Page still granted! Index: 0 gref ${gref}`)));
  kfreeSkb(w.held.pop()!);
  vif.flushDealloc();
  await settle();
  t.is(w.be.state, XenbusStateClosing);
  t.is(vif.state, 'idle');
  t.is(w.mapper.stats().liveHandles, 0, 'rings and grants unmapped');
  t.true(w.table.endForeignAccessRef(gref));
  must(await w.fdev.switchState(XenbusStateClosed));
  await settle();
  t.is(w.be.state, XenbusStateClosed);
  t.false(w.be.removed, 'online=1: the device stays for a reconnect');
});

test('the frontend dies with a grant in the stack: no notification to it, grants still unmapped, device removed', async (t) => {
  const w = await world();
  const f = await frontConnect(w);
  const vif = w.be.vif!;
  const gref = w.table.grantForeignAccess(BE, 10, true);
  f.tx.putRequest(TxRequest, { gref, offset: 0, flags: 0, id: 1, size: 3000 });
  f.tx.pushRequests();
  vif.txAction();
  must(await toolstackDestroyDomain(w.store, w.dom0, FE));
  w.mapper.removeDomain(FE);
  await settle();
  t.true(vif.guestDead);
  const raised = w.evtchn.domain(FE).counters().raised;
  kfreeSkb(w.held.pop()!);
  t.is(vif.flushDealloc(), 1);
  await settle();
  t.is(w.evtchn.domain(FE).counters().raised, raised, 'a dead guest is never notified');
  t.deepEqual(w.notices.grefs(), [], 'nor sent grant-return notices');
  t.is(w.mapper.stats().liveHandles, 0);
  t.true(w.be.removed);
  t.is(w.be.vif, null);
});

interface FatalCase {
  name: string;
  edit: (keys: [string, string][], f: FrontendSetup, w: World) => [string, string][];
  error: string | ((f: FrontendSetup) => string);
}

const fatalCases: FatalCase[] = [
  {
    name: 'request-rx-copy missing',
    edit: (k) => k.filter(([key]) => key !== VifKey.requestRxCopy),
    error: `${vifFrontendPath(FE, 0)}/request-rx-copy is not set: only the copying receive path is supported`,
  },
  {
    name: 'too many queues',
    edit: (k) => [...k, [VifKey.multiQueueNumQueues, '4']],
    error: 'guest requested 4 queues, exceeding the maximum of 1.',
  },
  {
    name: 'a corrupt feature value',
    edit: (k) => [...k.filter(([key]) => key !== VifKey.featureSg), [VifKey.featureSg, 'yes']],
    error: 'feature-sg is corrupt: expected an integer 0 <= x <= 4294967295 but got "yes"',
  },
  {
    name: 'no ring refs',
    edit: (k) => k.filter(([key]) => key !== VifKey.rxRingRef),
    error: `reading ${vifFrontendPath(FE, 0)}/ring-ref`,
  },
  {
    name: 'no event channel',
    edit: (k) => k.filter(([key]) => key !== VifKey.eventChannel),
    error: `reading ${vifFrontendPath(FE, 0)}/event-channel(-tx/rx)`,
  },
  {
    name: 'a ring ref that is not granted',
    edit: (k) => [...k.filter(([key]) => key !== VifKey.txRingRef), [VifKey.txRingRef, '200']],
    error: (f) => `mapping shared-frames 200/${f.rxRef} port tx ${f.port} rx ${f.port}: ring grant 200: GNTST_general_error`,
  },
  {
    name: 'impossible ring indices (-EIO)',
    edit: (k, _f, w) => {
      Atomics.store(new Int32Array(w.mem.sab, 0, 4), kReqProd, 1000);
      return k;
    },
    error: (f) => `mapping shared-frames ${f.txRef}/${f.rxRef} port tx ${f.port} rx ${f.port}: ring indices are corrupt: expected req_prod - rsp_prod <= 256 but got 1000`,
  },
];

for (const c of fatalCases) {
  test(`xenbus_dev_fatal: ${c.name}`, async (t) => {
    const w = await world();
    const f = await frontConnect(w, (k, f) => c.edit(k, f, w));
    const msg = typeof c.error === 'string' ? c.error : c.error(f);
    t.is(w.be.lastError, msg);
    t.is(w.be.state, XenbusStateClosing);
    t.is(w.be.vif!.state, 'idle');
    t.is(w.mapper.stats().liveHandles, 0, 'nothing left mapped');
    const e = await w.dom0.read(`/local/domain/0/error/backend/vif/1/0/error`);
    t.true(e.ok && e.value.endsWith(` ${msg}`));
  });
}

test('Connected waits for hotplug-status=connected', async (t) => {
  const w = await world({ hotplug: false });
  await frontConnect(w);
  t.is(w.be.state, XenbusStateInitWait);
  must(await w.dom0.write(`${w.bePath}/hotplug-status`, 'connected'));
  await settle();
  t.is(w.be.state, XenbusStateConnected);
  t.is(w.be.vif!.state, 'connected');
});

test('reconnect after Closed: a fresh data path on new rings', async (t) => {
  const w = await world();
  await frontConnect(w);
  must(await w.fdev.switchState(XenbusStateClosing));
  await settle();
  must(await w.fdev.switchState(XenbusStateClosed));
  await settle();
  t.is(w.be.state, XenbusStateClosed);
  w.table.endForeignAccess(8);
  w.table.endForeignAccess(9);
  must(await w.fdev.switchState(1));
  await settle();
  t.is(w.be.state, XenbusStateInitWait);
  await frontConnect(w);
  t.is(w.be.state, XenbusStateConnected);
  t.is(w.be.connects, 2);
  t.is(w.mapper.stats().liveHandles, 2);
});

test('remove: Closed, hotplug-status gone, the vif destroyed', async (t) => {
  const w = await world();
  await frontConnect(w);
  await w.be.remove();
  t.is(w.be.state, XenbusStateClosed);
  t.deepEqual(await w.dom0.read(`${w.bePath}/hotplug-status`), { ok: false, error: 'ENOENT' });
  t.is(w.mapper.stats().liveHandles, 0);
  t.is(w.be.vif, null);
});

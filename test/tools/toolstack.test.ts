import test from 'ava';
import { LATENCY_BUCKETS, STATS_COUNTERS, sGranted, sOutstanding, sReturned, sTxBytes, sTxPackets, type GuestReport } from '../../frontend/loop.js';
import { LatencyHistogram } from '../../frontend/netfront.js';
import { guestMac, macToString } from '../../shared/ether.js';
import { guestIp } from '../../shared/inet.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import { XenStore } from '../../shared/xenstore.js';
import { vifBackendPath, vifFrontendPath } from '../../shared/xenbus.js';
import {
  ENDPOINT,
  REMOTE,
  Toolstack,
  auditOf,
  buildGuestDomain,
  guestConfig,
  reportFromSample,
  systemProgress,
  type GuestBuildOptions,
  type GuestSample,
} from '../../tools/toolstack.js';

const build: GuestBuildOptions = {
  guests: 3,
  seed: 5,
  mtu: 1500,
  traffic: 'mix',
  fixedSize: 1500,
  guestFrames: 64,
  grantEntries: 128,
  returnDeadlineMs: 1000,
  spin: 10,
  publishEveryMs: 50,
  closeTimeoutMs: 2000,
};

test('addresses: Xen OUI MACs and 10.0.x.y by domid, distinct from the endpoint and the remote host', (t) => {
  t.is(macToString(guestMac(1)), '00:16:3e:00:00:01');
  t.is(macToString(guestMac(300)), '00:16:3e:00:01:2c');
  t.is(guestIp(300), (10 << 24) | (1 << 8) | 44);
  for (let d = 1; d <= 64; d++) {
    t.not(guestMac(d), ENDPOINT.mac);
    t.not(guestIp(d), ENDPOINT.ip);
    t.not(guestMac(d), REMOTE.mac);
  }
});

test('a guest\'s config names every other guest, the endpoint and the remote host; seeds differ per guest', (t) => {
  const c2 = guestConfig(2, build);
  t.deepEqual(c2.self, { mac: guestMac(2), ip: guestIp(2) });
  t.deepEqual(c2.guests, [1, 3].map((d) => ({ mac: guestMac(d), ip: guestIp(d) })));
  t.deepEqual(c2.endpoint, { mac: ENDPOINT.mac, ip: ENDPOINT.ip, port: ENDPOINT.port });
  t.deepEqual(c2.remote, { mac: REMOTE.mac, ip: REMOTE.ip });
  t.is(c2.backendDomid, 0);
  const seeds = new Set([1, 2, 3].map((d) => guestConfig(d, build).seed));
  t.is(seeds.size, 3);
  t.is(guestConfig(2, build).seed, c2.seed, 'deterministic');
});

test('building a guest domain introduces it and creates both vif directories as libxl does', async (t) => {
  const store = new XenStore();
  const conn = store.connect(0);
  if (!conn.ok) throw new Error(conn.error);
  const dom0 = XenstoreClient.local(conn.value);
  const d = await buildGuestDomain(store, dom0, 2, build);
  t.teardown(() => {
    d.xenstore.close();
    for (const p of [d.grantBackendPort, d.grantGuestPort, d.hostPort, d.hostGuestPort]) p.close();
    dom0.close();
  });
  t.true(store.isIntroduced(2));
  const fe = vifFrontendPath(2, 0);
  const be = vifBackendPath(0, 2, 0);
  const read = async (p: string): Promise<string> => {
    const r = await dom0.read(p);
    return r.ok ? r.value : `<${r.error}>`;
  };
  t.deepEqual(
    await Promise.all([`${fe}/state`, `${fe}/backend`, `${fe}/backend-id`, `${fe}/mac`, `${be}/state`, `${be}/frontend`, `${be}/online`, `${be}/hotplug-status`, `${be}/mac`].map(read)),
    ['1', be, '0', '00:16:3e:00:00:02', '1', fe, '1', 'connected', '00:16:3e:00:00:02'],
  );
  t.is(d.memory.nrFrames, 64);
  t.is(d.xenstore.ports.domid, 2);
  t.is(d.config.domid, 2);
});

function sample(at: number, tx: number, bytes: number, outstanding: number, lat: number[]): GuestSample {
  const counters = new Float64Array(STATS_COUNTERS);
  counters[sTxPackets] = tx;
  counters[sTxBytes] = bytes;
  counters[sOutstanding] = outstanding;
  const h = new LatencyHistogram();
  for (const x of lat) h.record(x);
  const histogram = new Float64Array(LATENCY_BUCKETS);
  histogram.set(h.counts);
  return { counters, histogram, at };
}

test('progress is the difference of two samples: rates per second, outstanding now, latency of the interval only', (t) => {
  const prev = [sample(1000, 100, 1e6, 5, [1000, 1000]), sample(1000, 0, 0, 0, [])];
  const cur = [sample(1500, 600, 1e6 + 125e6, 7, [1000, 1000, 10, 10, 10]), sample(1500, 50, 125e6, 1, [20])];
  const p = systemProgress([1, 2], prev, cur, 1.5);
  t.is(p.perGuest[0]!.pps, 1000);
  t.is(p.perGuest[0]!.gbps, 2);
  t.is(p.perGuest[0]!.outstanding, 7);
  t.is(p.pps, 1100);
  t.is(p.gbps, 4);
  t.is(p.outstanding, 8);
  // The interval holds 10, 10, 10 and 20 us: the 1000 us samples are from before.
  t.true(p.returnLatencyUs.p50 >= 10 && p.returnLatencyUs.p50 < 11);
  t.true(p.returnLatencyUs.p99 >= 20 && p.returnLatencyUs.p99 < 22);
  t.true(Number.isNaN(p.perGuest[1]!.returnLatencyUs.p50) === false);
  const idle = systemProgress([1], [prev[0]!], [prev[0]!], 1);
  t.true(Number.isNaN(idle.returnLatencyUs.p50), 'no sample in the interval: no latency figure');
});

function rep(over: Partial<GuestReport>): GuestReport {
  return { domid: 1, txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, granted: 0, returned: 0, outstanding: 0, corruptPayloads: 0, earlyReturns: 0, doubleReturns: 0, txErrors: 0, error: null, notes: [], ...over };
}

test('the audit adds the guests\' checks to the oracle\'s', (t) => {
  const guests = [rep({ granted: 10, returned: 9, outstanding: 1, corruptPayloads: 2, doubleReturns: 1 }), rep({ granted: 5, returned: 5, earlyReturns: 1 })];
  const backend = {
    oracle: { mapped: 15, returned: 14, earlyReturns: 3, doubleReturns: 4, leaks: 5, violations: [] },
    stillMapped: 0,
    corruptPayloads: 6,
    uplink: { frames: 0, tcp: 0, udpVerified: 0, udpCorrupt: 6, udpCorruptHostile: 0, other: 0, firstError: null },
    peer: { frames: 0, dataBytes: 0, corruptSegments: 0, badFrames: 0 },
    notes: [],
    errors: [],
  };
  t.deepEqual(auditOf(guests, backend), { granted: 15, returned: 14, outstanding: 1, leaked: 5, earlyReturns: 4, doubleReturns: 5, corruptPayloads: 8 });
  t.deepEqual(auditOf(guests, null), { granted: 15, returned: 14, outstanding: 1, leaked: 0, earlyReturns: 1, doubleReturns: 1, corruptPayloads: 2 });
});

test('a guest that never reported is reported from its last published counters', (t) => {
  const s = sample(0, 7, 700, 3, []);
  s.counters[sGranted] = 10;
  s.counters[sReturned] = 7;
  const r = reportFromSample(4, s, 'did not finish');
  t.like(r, { domid: 4, txPackets: 7, txBytes: 700, granted: 10, returned: 7, outstanding: 3, error: 'did not finish' });
});

test('the real thing: two guests on worker threads connect, exchange traffic, stop, shut down in order and audit clean', async (t) => {
  const ts = await Toolstack.boot({ guests: 2, seconds: 0.6, mtu: 1500, loss: 0, tap: false, pcapPath: null, seed: 3, publishEveryMs: 5 });
  t.teardown(() => ts.close());
  await ts.startTraffic();
  await new Promise((resolve) => setTimeout(resolve, 600));
  await ts.stopTraffic();
  // Stopped means stopped: nothing more is transmitted while the backend drains and the guests wait.
  const tx = (): number[] => ts.sample().map((x) => x.counters[sTxPackets]!);
  const atStop = tx();
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.deepEqual(tx(), atStop);
  const r = await ts.shutdown();
  t.deepEqual(r.errors, []);
  t.true(r.packets > 0 && r.bytes > r.packets);
  t.true(r.trafficSeconds >= 0.6 && r.trafficSeconds < 1.5);
  for (const g of r.perGuest) {
    t.true(g.txPackets > 0 && g.rxPackets > 0, `d${g.domid} sent and received`);
    t.is(g.error, null);
    t.is(g.outstanding, 0);
  }
  t.deepEqual(r.audit, { granted: r.audit.granted, returned: r.audit.granted, outstanding: 0, leaked: 0, earlyReturns: 0, doubleReturns: 0, corruptPayloads: 0 });
  t.true(r.audit.granted > 0);
  t.true(r.drain !== null && r.drain.quiescent && r.drain.liveSkbs === 0, 'the backend drained on its own once guests stopped');
  t.is(r.backend!.oracle.returned, r.backend!.oracle.mapped);
  t.is(r.backend!.stillMapped, 0);
});

// Crash recovery and the guests' faults in the running system (real worker threads): the backend killed, released
// and replaced with every guest reconnecting; a guest killed mid-traffic with its thread-mates unharmed; a revoke of
// grants still mapped refused, then completed; and the hypervisor's domain_kill helpers on their own.
import test from 'ava';
import { GUEST_KILLED, sConnects, sRevokeEnded, sRevokeRefused, sTxPackets } from '../../frontend/loop.js';
import { EvtchnHost, EVTCHNSTAT_closed, EVTCHNSTAT_unbound } from '../../shared/evtchn.js';
import { GTF_permit_access, GTF_readonly, GTF_reading, GTF_writing, GrantEntriesV1 } from '../../shared/gnttab.js';
import { BACKEND_DOMID, Toolstack, closeDomainPorts, mappedEntries, releaseMappings, sampleGuest, type ToolstackOptions } from '../../tools/toolstack.js';
import { stressAudit } from '../../tools/stress/audit.js';

const small: ToolstackOptions = {
  guests: 2,
  seconds: 1,
  mtu: 1500,
  loss: 0,
  tap: true,
  pcapPath: null,
  seed: 11,
  guestThreads: 1,
  guestFrames: 512,
  grantEntries: 1024,
  extraDomains: 4,
  rxDrainTimeoutMs: 1000,
  returnDeadlineMs: 2000,
  closeTimeoutMs: 5000,
};

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function counter(ts: Toolstack, domid: number, index: number): number {
  const d = ts.domains.find((x) => x.domid === domid)!;
  return sampleGuest(d.stats, 0, null).counters[index]!;
}

async function until(what: string, cond: () => boolean, ms: number): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(10);
  }
}

test('releaseMappings clears GTF_reading/GTF_writing of entries granted to the dead domain only', (t) => {
  const e = GrantEntriesV1.create(16);
  e.write(8, 0, 1, GTF_permit_access | GTF_readonly | GTF_reading);
  e.write(9, 0, 2, GTF_permit_access | GTF_reading | GTF_writing);
  e.write(10, 0, 3, GTF_permit_access);
  e.write(11, 5, 4, GTF_permit_access | GTF_reading);
  t.deepEqual(mappedEntries(e.sab, 0), [8, 9]);
  t.is(releaseMappings(e.sab, 0), 2);
  t.deepEqual(mappedEntries(e.sab, 0), []);
  t.is(e.flags(8), GTF_permit_access | GTF_readonly, 'the grant itself stays: only the pins go');
  t.is(e.flags(9), GTF_permit_access);
  t.is(e.flags(11), GTF_permit_access | GTF_reading, 'a mapping by another domain is not the dead one\'s');
});

test('closeDomainPorts closes every port of the dead domain; its peers go back to unbound', (t) => {
  const h = EvtchnHost.create({ maxDomains: 3, nrPorts: 32 });
  const guestPort = h.allocUnbound(1, 0);
  t.true(guestPort.ok);
  const bePort = h.bindInterdomain(0, 1, guestPort.ok ? guestPort.value : -1);
  t.true(bePort.ok);
  t.is(closeDomainPorts(h, 0), 1);
  const be = h.status(0, bePort.ok ? bePort.value : -1);
  t.true(be.ok && be.value.status === EVTCHNSTAT_closed);
  const g = h.status(1, guestPort.ok ? guestPort.value : -1);
  t.true(g.ok && g.value.status === EVTCHNSTAT_unbound && g.value.remoteDom === 0);
  t.is(closeDomainPorts(h, 0), 0, 'nothing left to close');
});

test('backend killed mid-traffic: its mappings released, a new backend, every guest reconnects; granted == returned', async (t) => {
  t.timeout(60_000);
  const ts = await Toolstack.boot(small);
  t.teardown(() => ts.close());
  await ts.startTraffic();
  await sleep(400);
  const r = await ts.killBackend(50, 150);
  t.deepEqual(r.problems, []);
  t.is(r.reconnected, 2);
  t.true(r.mappingsReleased > 0, 'the dead backend had grants mapped (at least the rings)');
  t.is(r.portsClosed, 2);
  t.is(ts.backends.length, 2);
  t.is(ts.backendCrashes, 0, 'an injected kill is no crash');
  for (const d of ts.domains) t.is(counter(ts, d.domid, sConnects), 2, `d${d.domid} connected twice`);
  // Traffic flows again through the new backend.
  const before = ts.domains.map((d) => counter(ts, d.domid, sTxPackets));
  await until('traffic after the restart', () => ts.domains.every((d, i) => counter(ts, d.domid, sTxPackets) > before[i]! + 50), 10_000);
  await ts.stopTraffic();
  const rep = await ts.shutdown();
  t.deepEqual(rep.errors, []);
  const audit = stressAudit(rep.perGuest, ts, rep.backend);
  t.true(audit.granted > 0);
  t.is(audit.returned, audit.granted, 'every grant came back: returned by a backend, or reclaimed after the old one died');
  t.is(audit.outstanding, 0);
  t.true(rep.perGuest.every((g) => (g.reclaimed ?? 0) > 0), 'the grants the dead backend held were reclaimed');
  t.deepEqual([audit.leaked, audit.earlyReturns, audit.doubleReturns, audit.corruptPayloads], [0, 0, 0, 0]);
});

test('a guest killed mid-traffic: its thread-mate keeps sending; the backend lets go of every grant of the dead', async (t) => {
  t.timeout(60_000);
  const ts = await Toolstack.boot(small);
  t.teardown(() => ts.close());
  await ts.startTraffic();
  await sleep(300);
  const [d1, d2] = ts.domains;
  t.is(d1!.stats.threadId, d2!.stats.threadId, 'both guests share one thread');
  const k = await ts.killGuest(1);
  t.is(d1!.stats.state, GUEST_KILLED);
  t.is(k.portsClosed, 1);
  const sent = counter(ts, 2, sTxPackets);
  await until('the thread-mate sends on', () => counter(ts, 2, sTxPackets) > sent + 200, 10_000);
  const dead = ts.dead[0]!;
  t.is(dead.domid, 1);
  t.true(dead.report.granted > 0);
  // Once the stack frees the dead guest's pages, netback unmaps them: nothing of its table stays mapped.
  await until('the dead guest\'s grants unmapped', () => mappedEntries(dead.table!, BACKEND_DOMID).length === 0, 15_000);
  await ts.stopTraffic();
  const rep = await ts.shutdown();
  t.deepEqual(rep.errors, []);
  t.is(rep.perGuest.length, 1);
  t.is(rep.perGuest[0]!.error, null);
  const audit = stressAudit(rep.perGuest, ts, rep.backend);
  t.is(audit.returned, audit.granted);
  t.deepEqual([audit.outstanding, audit.leaked, audit.earlyReturns, audit.doubleReturns, audit.corruptPayloads], [0, 0, 0, 0, 0]);
});

test('revoke of grants still mapped: end access refused while the NIC holds them, then they end once it lets go', async (t) => {
  t.timeout(60_000);
  const ts = await Toolstack.boot({ ...small, guests: 1, traffic: 'fixed', fixedSize: 1400 });
  t.teardown(() => ts.close());
  await ts.startTraffic();
  await ts.backendFault({ kind: 'nic-stall', ms: 1500 });
  await sleep(100);
  ts.domains[0]!.stats.requestRevoke(4);
  await until('a refused revoke', () => counter(ts, 1, sRevokeRefused) > 0, 5000);
  const refused = counter(ts, 1, sRevokeRefused);
  t.true(refused >= 1 && refused <= 4, `at most 4 revoked: ${refused}`);
  t.is(counter(ts, 1, sRevokeEnded), 0, 'nothing ends while the NIC holds the pages');
  await until('the revoked grants ended', () => counter(ts, 1, sRevokeEnded) === refused, 10_000);
  await ts.stopTraffic();
  const rep = await ts.shutdown();
  t.deepEqual(rep.errors, []);
  t.is(rep.audit.outstanding, 0);
  t.is(rep.audit.earlyReturns + rep.audit.doubleReturns + rep.audit.leaked + rep.audit.corruptPayloads, 0);
});

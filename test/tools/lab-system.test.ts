// The lab's whole-system runs (tools/lab/system.ts) on the one-thread rig with virtual time: every grant the
// oracle saw mapped is seen returned by the promptness tracker, the workloads' switches (stall, TSO) take effect,
// a sound design is clean, the negative control is caught, and a failing run is reported instead of thrown.
import test from 'ava';
import { labDesign, type LabDesign } from '../../tools/lab/designs.js';
import { runSystem } from '../../tools/lab/system.js';
import { WORKLOADS, mixSource, type SystemWorkload } from '../../tools/lab/workloads.js';

const SYSTEM = WORKLOADS.filter((w): w is SystemWorkload => w.kind === 'system');

function design(name: string): LabDesign {
  const d = labDesign(name);
  if (d === undefined) throw new Error(`no design ${name}`);
  return d;
}

function workload(name: string): SystemWorkload {
  const w = SYSTEM.find((x) => x.name === name);
  if (w === undefined) throw new Error(`no workload ${name}`);
  return w;
}

test('rusty on every system workload: traffic flows, no violation, and every mapped grant is tracked back', (t) => {
  for (const w of SYSTEM) {
    const m = runSystem(design('rusty'), w, 0.05, 3);
    t.true(m.packets > 0, `${w.name}: packets`);
    t.true(m.mapped > 0, `${w.name}: grants mapped`);
    t.deepEqual({ early: m.earlyReturns, double: m.doubleReturns, leaks: m.leaks, other: m.otherFailures }, { early: 0, double: 0, leaks: 0, other: 0 }, `${w.name}: ${m.firstViolation}`);
    t.is(m.promptness?.returned, m.mapped, `${w.name}: the tracker saw every mapped grant come back`);
    t.deepEqual(m.notes, [], w.name);
    t.true(m.virtualMs >= 50, `${w.name}: ran ${m.virtualMs} virtual ms`);
  }
});

test('each workload makes the system do what it is named for', (t) => {
  const ev = (name: string, seconds = 0.1): Readonly<Record<string, number>> => runSystem(design('rusty'), workload(name), seconds, 3).events;
  const tcp = ev('tcp-loss');
  t.true(tcp['tcpRetransmits']! > 0 && tcp['tcpPartialAcks']! > 0 && tcp['wireLost']! > 0, JSON.stringify(tcp));
  t.true(tcp['nicSegmented']! > 0 && tcp['tcpFragments']! > 0);
  const flood = ev('flood');
  t.true(flood['floodClones']! >= 7 * 100, JSON.stringify(flood));
  t.true(ev('tap')['tapCaptured']! > 0);
  const gso = ev('gso-no-tso');
  t.true(gso['nicSegmented']! > 0 && gso['nicTsoFrames'] === 0, JSON.stringify(gso));
  // The stalled guest's RX queue reaches its byte cap (XSA-392) after a while; then frames for it are dropped.
  const stalled = ev('stalled', 0.3);
  t.true(stalled['rxQueueFull']! + stalled['rxDropped']! > 0, JSON.stringify(stalled));
});

test('naive is caught on bulk TCP with loss, with the oracle\'s first early return as the breaking operation', (t) => {
  const m = runSystem(design('naive'), workload('tcp-loss'), 0.05, 3);
  t.true(m.earlyReturns > 0);
  t.regex(m.firstViolation ?? '', /^early return of gref \d+ \(domid \d, page \d+\) at step \d+: still reachable from root \d+ /);
});

test('a stalled receiver takes fewer frames while the others keep sending; it catches up and every grant comes back', (t) => {
  const stalled = workload('stalled');
  const flowing: SystemWorkload = { ...stalled, stalled: [] };
  const a = runSystem(design('rusty'), stalled, 0.1, 5);
  const b = runSystem(design('rusty'), flowing, 0.1, 5);
  const rx = (m: typeof a, domid: number): number => m.guests.find((g) => g.domid === domid)!.rxPackets;
  t.true(rx(a, 1) < rx(b, 1), `stalled ${rx(a, 1)} vs flowing ${rx(b, 1)}`);
  t.is(a.guests.find((g) => g.domid === 2)!.txPackets, b.guests.find((g) => g.domid === 2)!.txPackets, 'the senders send the same');
  t.is(a.promptness?.returned, a.mapped);
  t.is(a.earlyReturns + a.leaks, 0);
});

test('without TSO the NIC segments GSO skbs in software (skb_segment); with TSO it does not', (t) => {
  const noTso = runSystem(design('rusty'), workload('gso-no-tso'), 0.05, 7);
  const tso = runSystem(design('rusty'), { ...workload('gso-no-tso'), nicTso: true }, 0.05, 7);
  t.true((noTso.stats['segments'] ?? 0) > 0);
  t.is(tso.stats['segments'] ?? 0, 0);
});

test('the same seed gives the same run (everything but wall-clock time)', (t) => {
  const strip = (m: ReturnType<typeof runSystem>): unknown => ({ ...m, wallMs: 0 });
  t.deepEqual(strip(runSystem(design('rusty'), workload('tap'), 0.03, 11)), strip(runSystem(design('rusty'), workload('tap'), 0.03, 11)));
});

test('a run that throws is reported with its step and message, never thrown', (t) => {
  const broken: SystemWorkload = {
    ...workload('flood'),
    source: (env) => {
      const s = mixSource(env, { broadcast: 1 }, []);
      return {
        maxFrameLen: s.maxFrameLen,
        next: () => {
          throw new Error('the guest exploded');
        },
        nextDeadline: () => Infinity,
      };
    },
  };
  const m = runSystem(design('rusty'), broken, 0.05, 1);
  t.regex(m.firstViolation ?? '', /^step \d+: the guest exploded$/);
  t.true(m.otherFailures >= 1);
});

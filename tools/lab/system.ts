// A whole-system run: guests and dom0 in one thread (tools/bench/rig.ts) on a VirtualClock, stepped alternately
// for `seconds` of virtual time, then drained (no new frames; stalled guests resume) until every grant is back.
// Each lab step is: every guest's turn, the backend's softirq round, a promptness scan, then time moves on by
// BUSY_STEP_MS, or straight to the next timer when nothing happened. Everything but the wall-clock figures
// follows from the seed.
import type { BackendConfig } from '../../backend/loop.js';
import type { GrantEvents } from '../../backend/netback.js';
import type { NetdevFeatures } from '../../backend/netdev.js';
import type { Nic } from '../../backend/nic.js';
import type { Page } from '../../backend/page.js';
import type { SkBuff } from '../../backend/skbuff.js';
import { OneThreadRig, type RigGuest } from '../bench/rig.js';
import { VirtualClock, type Clock } from '../../shared/clock.js';
import { Random } from '../../shared/random.js';
import type { LabDesign } from './designs.js';
import { PromptnessTracker } from './promptness.js';
import { snapshotStats, type GuestCounts, type RunMeasure } from './run.js';
import { ENDPOINT, LAB_MTU, REMOTE, type LabSource, type SystemWorkload } from './workloads.js';

/** Virtual time a step with work takes, ms (the NIC completes in 0.05 ms; the peer's RTT is 1 ms). */
export const BUSY_STEP_MS = 0.1;
/** How long the drain may take in virtual time before what is left is aborted, ms. */
export const DRAIN_MS = 30_000;
/** After aborting, how long the aborted grants may take to come back, ms. */
export const ABORT_GRACE_MS = 5_000;
/** A bound on the steps of one phase, so a design that never lets go cannot hang the lab. */
export const MAX_PHASE_STEPS = 2_000_000;

/** The backend configuration of a workload for a design. */
export function labBackendConfig(design: string, w: SystemWorkload, seed: number): BackendConfig {
  return {
    domid: 0,
    seed,
    mtu: LAB_MTU,
    loss: 0,
    tap: false,
    tapHoldMs: 0,
    pcapPath: null,
    design,
    grantCopy: false,
    endpoint: ENDPOINT,
    remote: REMOTE,
    remoteRttMs: 1,
    nicCompletionDelayMs: 0.05,
    rxDrainTimeoutMs: 10_000,
    uplinkVerify: true,
    ...w.backend,
  };
}

// Departure (lab-local hook): BackendConfig has no NIC feature switch, so the uplink's TSO is turned off on the
// built NIC before any traffic. The TCP endpoint still builds GSO skbs (Linux keeps software GSO on), which the
// NIC then segments in software as validate_xmit_skb does.
function setNicTso(nic: Nic, tso: boolean): void {
  (nic as { features: NetdevFeatures }).features = { sg: nic.features.sg, tso: tso && nic.features.sg };
}

// Departure (lab-local hook): the rig hands dom0's GrantEvents to every vif and has no option to chain another
// listener, so the lab wraps that object's two callbacks, before any traffic, to see each mapping and return.
// The checks on each returned batch (the oracle's reachability pass and ours) are timed, so that the speed figures
// measure the data path without them.
function observeGrants(
  events: GrantEvents,
  onMapped: (page: Page) => void,
  onReturned: (pages: readonly Page[], n: number) => void,
  checked: (ms: number) => void,
): void {
  const mapped = events.mapped.bind(events);
  const returned = events.returned.bind(events);
  events.mapped = (page: Page): void => {
    mapped(page);
    onMapped(page);
  };
  events.returned = (pages: readonly Page[], n: number): void => {
    const t0 = performance.now();
    onReturned(pages, n);
    returned(pages, n);
    checked(performance.now() - t0);
  };
}

function describeError(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs `w` with design `d` for `seconds` of virtual time. Never throws: a thrown error ends the run and is reported. */
export function runSystem(d: LabDesign, w: SystemWorkload, seconds: number, seed: number): RunMeasure {
  const clock = new VirtualClock();
  const random = new Random(seed);
  const sources: LabSource[] = [];
  const tracker = new PromptnessTracker();
  const notes: string[] = [];
  let step = 0;
  let wallMs = 0;
  // Time spent inside the steps checking returned batches (not data path).
  let checkMs = 0;
  let error: string | null = null;
  let rig: OneThreadRig | null = null;
  try {
    rig = new OneThreadRig({
      clock,
      config: labBackendConfig(d.name, w, seed),
      guests: w.guests,
      source: (domid) => {
        const s = w.source({ domid, guests: w.guests, clock, random: random.fork() });
        sources.push(s);
        return s;
      },
    });
    const dom0 = rig.dom0;
    setNicTso(dom0.stack.nic, w.nicTso);
    observeGrants(
      dom0.events,
      (page) => tracker.noteMapped(page),
      (pages, n) => tracker.noteReturned(pages, n, step, clock.now()),
      (ms) => (checkMs += ms),
    );
    const forEachRoot = (fn: (skb: SkBuff) => void): void => dom0.stack.forEachSkb(fn);
    const theRig = rig;
    const stalled = new Set(w.stalled);
    const runEnd = seconds * 1000;

    /** One lab step (`running`: guests transmit and stalled guests stall); returns the work done. */
    const stepOnce = (running: boolean, until: number): number => {
      step++;
      dom0.oracle.step = step;
      const stall = running && clock.now() >= w.stallAfterMs;
      const t0 = performance.now();
      let did = 0;
      const guests = theRig.guests;
      for (let i = 0; i < guests.length; i++) {
        const g: RigGuest = guests[i]!;
        if (stall && stalled.has(g.domid)) continue;
        did += theRig.guestStep(g, running);
      }
      did += theRig.backendStep();
      wallMs += performance.now() - t0;
      tracker.scan(forEachRoot, step, clock.now());
      const now = clock.now();
      if (did > 0) {
        clock.advance(BUSY_STEP_MS);
      } else {
        let next = Math.min(dom0.nextDeadline(), clock.nextDeadline(), until);
        if (running) for (const s of sources) next = Math.min(next, s.nextDeadline());
        // Never idle past the moment the stall begins.
        if (running && w.stalled.length > 0 && now < w.stallAfterMs) next = Math.min(next, w.stallAfterMs);
        clock.advance(Math.max(BUSY_STEP_MS, next - now));
      }
      return did;
    };

    // Run: every guest transmits; stalled guests stop taking their turn after stallAfterMs.
    for (let i = 0; clock.now() < runEnd && i < MAX_PHASE_STEPS; i++) stepOnce(true, runEnd);
    // Drain: no new frames; every guest (stalled ones too) takes its turn until every grant is back.
    const drainEnd = clock.now() + DRAIN_MS;
    for (let i = 0; !theRig.quiescent() && clock.now() < drainEnd && i < MAX_PHASE_STEPS; i++) stepOnce(false, drainEnd);
    if (!theRig.quiescent()) {
      const aborted = dom0.abortHolders();
      if (aborted.length > 0) notes.push(`aborted at the drain deadline: ${aborted.join(', ')}`);
      const graceEnd = clock.now() + ABORT_GRACE_MS;
      for (let i = 0; !theRig.quiescent() && clock.now() < graceEnd && i < MAX_PHASE_STEPS; i++) stepOnce(false, graceEnd);
      if (!theRig.quiescent()) notes.push(`not quiescent: ${dom0.liveSkbs()} live skbs, ${tracker.outstanding} grants outstanding`);
    }
  } catch (e) {
    error = `step ${step}: ${describeError(e)}`;
  }
  return measure(rig, tracker, error, notes, step, Math.max(0, wallMs - checkMs), clock);
}

/** What the workload made the system do: the counters that show each workload exercises what it is named for. */
function workloadEvents(rig: OneThreadRig): Record<string, number> {
  const st = rig.dom0.stack.stats;
  const ep = rig.dom0.endpoint.stats;
  let rxQueueFull = 0;
  let rxDropped = 0;
  for (const g of rig.guests) {
    rxQueueFull += g.vif.stats.rxQueueFull;
    rxDropped += g.vif.stats.txDropped + g.vif.stats.rxDropped;
  }
  return {
    tcpRetransmits: ep.retransmits,
    tcpPartialAcks: ep.partialAcks,
    tcpFragments: ep.fragments,
    tcpPskbCopies: ep.pskbCopies,
    floodClones: st.bridge.floodClones,
    tapCaptured: st.tap?.captured ?? 0,
    nicSegmented: st.nic.segmented,
    nicTsoFrames: st.nic.tsoFrames,
    wireLost: st.nic.lost,
    rxQueueFull,
    rxDropped,
  };
}

function measure(rig: OneThreadRig | null, tracker: PromptnessTracker, error: string | null, notes: string[], steps: number, wallMs: number, clock: Clock): RunMeasure {
  let packets = 0;
  let bytes = 0;
  let corrupt = 0;
  let zcSent = 0;
  let zcFail = 0;
  let early = 0;
  let double = 0;
  let leaks = 0;
  let mapped = 0;
  let first: string | null = error;
  let stats: Record<string, number> = {};
  let events: Record<string, number> = {};
  const guests: GuestCounts[] = [];
  if (rig !== null) {
    events = workloadEvents(rig);
    for (const g of rig.guests) {
      guests.push({ domid: g.domid, txPackets: g.nf.stats.txPackets, rxPackets: g.nf.stats.rxPackets });
      packets += g.nf.stats.txPackets;
      bytes += g.nf.stats.txBytes;
      corrupt += g.nf.stats.rxCorruptPayloads;
      zcSent += g.vif.stats.txZerocopySent;
      zcFail += g.vif.stats.txZerocopyFail;
    }
    stats = snapshotStats(rig.dom0.ctx.stats);
    try {
      const r = rig.dom0.report();
      early = r.oracle.earlyReturns;
      double = r.oracle.doubleReturns;
      leaks = r.oracle.leaks;
      mapped = r.oracle.mapped;
      corrupt += r.corruptPayloads;
      first ??= r.oracle.violations[0] ?? null;
      if (corrupt > 0) first ??= `corrupt payloads: ${corrupt}${r.notes.length > 0 ? ` (${r.notes[0]})` : ''}`;
      rig.dom0.close();
    } catch (e) {
      first ??= `report: ${describeError(e)}`;
      error ??= describeError(e);
    }
  }
  const p = tracker.summary();
  return {
    packets,
    bytes,
    mapped,
    guests,
    earlyReturns: early,
    doubleReturns: double,
    leaks,
    otherFailures: corrupt + (error === null ? 0 : 1),
    firstViolation: first,
    promptness: p,
    events,
    lateMeanSteps: p.meanSteps,
    stats,
    zerocopyCompletions: zcSent,
    copiedCompletions: zcFail,
    wallMs,
    steps,
    virtualMs: clock.now(),
    notes,
  };
}

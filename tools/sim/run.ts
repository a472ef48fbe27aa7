// runSim: one stress run in the deterministic one-thread simulator (`npm run stress -- --sim`). Boots the world
// (backend and guests connected through the xenstore), runs `seconds` of virtual time of the demo's traffic mix while
// a seeded fault schedule is applied, optionally plays the malicious-guest catalogue against the same backend, then
// shuts down in order and audits every grant across every incarnation. One seed gives one execution: the event log,
// the audit and every count come out byte-identical on every run of the same arguments.

import { ADVERSARY_CASES, runAdversaryCatalogue, type AdversaryCase, type AdversarySummary } from '../../frontend/adversary.js';
import { formatMixSettings, type MixSettings } from '../../frontend/traffic.js';
import { simAudit, simAuditClean, type SimAudit } from './audit.js';
import { EventLog } from './eventlog.js';
import { FAULT_TYPES, formatFaultEvent, makeFaultSchedule, type FaultEvent, type FaultType } from './faults.js';
import { ADVERSARY_DOMAINS, SimWorld, simDefaultRate } from './world.js';

/** What runSim takes. */
export interface SimOptions {
  readonly seed: number;
  /** Virtual seconds of traffic. */
  readonly seconds: number;
  readonly guests: number;
  /** The fault schedule (a thread-mode failure's, to replay); default makeFaultSchedule(seed, seconds, guests). */
  readonly schedule?: readonly FaultEvent[];
  /** Release design of the backend (default 'rusty'; 'naive' is the negative control). */
  readonly design?: string;
  /** Play the malicious-guest catalogue against the world after the traffic (default false). */
  readonly adversary?: boolean;
  /** The cases to play when `adversary` (default the whole catalogue). */
  readonly adversaryCases?: readonly AdversaryCase[];
  /** Called once per virtual second of traffic. */
  readonly onProgress?: (p: SimProgress) => void;
  /** Called with every event-log line as it is written (live output). */
  readonly onLogLine?: (line: string) => void;
  /** Mix frames per second per guest (default simDefaultRate(guests)). */
  readonly rate?: number;
  /** What the guests' mix changes (weights, UDP sizes; frontend/traffic.ts parseMixSettings); default none. */
  readonly mix?: MixSettings;
  /** netback's RX drain timeout, ms (default 10000, Linux's). */
  readonly rxDrainTimeoutMs?: number;
}

/** Progress once per virtual second. */
export interface SimProgress {
  readonly virtualSeconds: number;
  /** Frames and bytes transmitted so far (all guests, all incarnations). */
  readonly packets: number;
  readonly bytes: number;
  /** TX grants out right now. */
  readonly outstanding: number;
  /** Faults applied so far, by type. */
  readonly faults: Readonly<Record<FaultType, number>>;
}

/** What a simulated run reports. */
export interface SimReport {
  readonly seed: number;
  /** Virtual seconds of traffic. */
  readonly seconds: number;
  readonly guests: number;
  readonly audit: SimAudit;
  /** Faults applied, by type (every type present). */
  readonly faults: Record<FaultType, number>;
  readonly adversary: { readonly cases: number; readonly handled: number; readonly backendCrashes: number };
  /** The canonical event log (byte-identical for the same options). */
  readonly eventLog: string;
  /** Frames and bytes the guests transmitted during the traffic. */
  readonly packets: number;
  readonly bytes: number;
  /** The schedule that was applied, in its canonical text form. */
  readonly schedule: string;
  /** Failures that are not audit figures (crashes, posts to dead guests, timeouts), empty when none. */
  readonly errors: readonly string[];
  /** Backend crashes no fault injected. */
  readonly backendCrashes: number;
  /** The adversary cases that were not handled, with why. */
  readonly adversaryFailures: readonly string[];
  /** The names of those cases. */
  readonly adversaryFailedCases: readonly string[];
  /** Audit clean, no error, every adversary case handled. */
  readonly clean: boolean;
}

/** Bounds of the options (as the stress tool's flags). */
export const SIM_MAX_SECONDS = 3600;
export const SIM_MAX_GUESTS = 64;

/** Runs one simulated stress run; throws only for bad options (a RangeError with an exact message). */
export async function runSim(o: SimOptions): Promise<SimReport> {
  if (!Number.isInteger(o.seed) || o.seed < 0 || o.seed > 0xffffffff) throw new RangeError(`seed must be an integer in [0, 4294967295] but got ${o.seed}`);
  if (!(o.seconds > 0 && o.seconds <= SIM_MAX_SECONDS)) throw new RangeError(`seconds must be a number in (0, ${SIM_MAX_SECONDS}] but got ${o.seconds}`);
  if (!Number.isInteger(o.guests) || o.guests < 1 || o.guests > SIM_MAX_GUESTS) throw new RangeError(`guests must be an integer in [1, ${SIM_MAX_GUESTS}] but got ${o.guests}`);
  const rate = o.rate ?? simDefaultRate(o.guests);
  if (!(rate > 0 && rate <= 1e6)) throw new RangeError(`rate must be a number in (0, 1000000] but got ${rate}`);
  const schedule = o.schedule ?? makeFaultSchedule(o.seed, o.seconds, o.guests);
  const log = new EventLog();
  if (o.onLogLine !== undefined) log.onLine(o.onLogLine);
  const kills = schedule.filter((e) => e.type === 'guest-kill').length;
  const cases = o.adversary === true ? (o.adversaryCases ?? ADVERSARY_CASES) : [];
  const design = o.design ?? 'rusty';
  log.add(0, 'sim', 'start', [['seed', o.seed], ['seconds', o.seconds], ['guests', o.guests], ['design', design], ['rate', rate], ...(o.mix === undefined ? [] : [['mix', formatMixSettings(o.mix)] as const]), ['adversary', cases.length]]);
  for (const e of schedule) {
    const [at, type, ...params] = formatFaultEvent(e).split(' ');
    log.add(0, 'schedule', type!, [['at', at!], ...params.map((p) => p.split('=') as [string, string])]);
  }
  const world = await SimWorld.create({
    seed: o.seed,
    guests: o.guests,
    design,
    rate,
    ...(o.mix !== undefined && { mix: o.mix }),
    log,
    // Replacements after kills, a margin for crashes (each one reboots a domain), and one domain per adversary case.
    extraDomains: kills + 32 + (cases.length > 0 ? Math.max(ADVERSARY_DOMAINS, cases.length) + 4 : 0),
    ...(o.rxDrainTimeoutMs !== undefined && { rxDrainTimeoutMs: o.rxDrainTimeoutMs }),
  });
  await world.waitConnected();
  const clock = world.clock;
  const t0 = clock.now();
  const runMs = o.seconds * 1000;
  world.setTraffic(true);
  for (const e of schedule) {
    if (e.at >= runMs) {
      log.add(clock.now(), 'fault-skipped', e.type, [['why', 'after-the-run']]);
      continue;
    }
    clock.schedule(t0 + e.at - clock.now(), () => world.applyFault(e));
  }
  const end = t0 + runMs;
  let nextTick = t0 + 1000;
  const tick = (): void => {
    const tx = world.txTotals();
    const outstanding = world.outstanding();
    const secs = Math.round((clock.now() - t0) / 1000);
    log.add(clock.now(), 'tick', `${secs}s`, [['packets', tx.packets], ['bytes', tx.bytes], ['outstanding', outstanding], ['mapped', world.backend?.dom0.mapper.stats().liveHandles ?? -1]]);
    o.onProgress?.({ virtualSeconds: secs, packets: tx.packets, bytes: tx.bytes, outstanding, faults: { ...world.faultCounts } });
  };
  while (clock.now() < end) {
    await world.round(Math.min(nextTick, end));
    if (clock.now() >= nextTick) {
      tick();
      nextTick += 1000;
    }
  }
  world.setTraffic(false);
  const sent = world.txTotals();
  let adv: AdversarySummary | null = null;
  if (cases.length > 0) {
    world.endFaultWindows();
    if (world.allConnected() || (await world.waitConnected())) {
      log.add(clock.now(), 'adversary', 'start', [['cases', cases.length]]);
      adv = await runAdversaryCatalogue(world, cases);
      for (const r of adv.results) log.add(clock.now(), 'adversary', r.name, [['handled', r.handled], ['crashed', r.backendCrashed]]);
    }
  }
  const tallies = await world.shutdown();
  const audit = simAudit(tallies.guests, tallies.backends);
  const faults = { ...world.faultCounts };
  log.add(clock.now(), 'audit', simAuditClean(audit) ? 'clean' : 'FAILED', Object.entries(audit));
  log.add(clock.now(), 'faults', 'applied', FAULT_TYPES.map((t) => [t, faults[t]] as [string, number]));
  const adversary = { cases: adv?.cases ?? 0, handled: adv?.handled ?? 0, backendCrashes: adv?.backendCrashes ?? 0 };
  if (cases.length > 0) log.add(clock.now(), 'adversary', 'summary', Object.entries(adversary));
  for (const e of world.errors) log.add(clock.now(), 'error', e.split('\n')[0]!.replace(/\s+/g, '_'));
  const adversaryFailures = (adv?.results ?? []).filter((r) => !r.handled).map((r) => `${r.name}: ${r.detail}`);
  if (cases.length > 0 && adv === null) adversaryFailures.push('the catalogue never ran: guests were not connected');
  return {
    seed: o.seed,
    seconds: o.seconds,
    guests: o.guests,
    audit,
    faults,
    adversary,
    eventLog: log.text(),
    packets: sent.packets,
    bytes: sent.bytes,
    schedule: schedule.map(formatFaultEvent).join('\n'),
    errors: [...world.errors],
    backendCrashes: world.backendCrashes,
    adversaryFailures,
    adversaryFailedCases: (adv?.results ?? []).filter((r) => !r.handled).map((r) => r.name),
    clean: simAuditClean(audit) && world.errors.length === 0 && adversaryFailures.length === 0,
  };
}

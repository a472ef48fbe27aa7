// The seeded fault schedule of a stress run, shared by both modes: the one-thread simulator (`--sim`) applies it on
// virtual time, the thread-mode stress tool on real time. A schedule is data: a list of fault events, each with a
// time (ms after traffic starts) and its parameters. It prints as one canonical line per event and parses back
// exactly, so a failing thread-mode run prints its schedule and the same schedule replays in `--sim`.
//
// Text form, one event per line (or separated by `;`), keys in a fixed order per type:
//   12000 loss dur=3000 p=0.05
//   15000 guest-kill g=2 restart=1500
// `g` is a guest slot (1..guests); a killed guest comes back as a new domain in the same slot after `restart` ms.

import { Random } from '../../shared/random.js';
import { err, ok, type Result } from '../../shared/result.js';

/** Every kind of fault, in the canonical order reports list them. */
export const FAULT_TYPES = [
  'loss',
  'nic-stall',
  'tap-hold',
  'slow-receiver',
  'stalled-receiver',
  'guest-kill',
  'backend-kill',
  'revoke-mapped',
  'event-storm',
] as const;

/** One kind of fault. */
export type FaultType = (typeof FAULT_TYPES)[number];

/** The uplink loses each frame with probability `p` for `dur` ms. */
export interface LossFault {
  readonly type: 'loss';
  readonly at: number;
  readonly dur: number;
  readonly p: number;
}

/** The uplink NIC completes nothing for `dur` ms (nic.stall): every frame sent to it keeps its pages. */
export interface NicStallFault {
  readonly type: 'nic-stall';
  readonly at: number;
  readonly dur: number;
}

/** The tap holds each clone for `hold` ms instead of its default, for `dur` ms (tap.setHoldMs). */
export interface TapHoldFault {
  readonly type: 'tap-hold';
  readonly at: number;
  readonly dur: number;
  readonly hold: number;
}

/** Guest `g` takes one RX packet every `every` ms for `dur` ms (a slow receiver). */
export interface SlowReceiverFault {
  readonly type: 'slow-receiver';
  readonly at: number;
  readonly dur: number;
  readonly g: number;
  readonly every: number;
}

/** Guest `g` posts no RX buffer for `dur` ms (seed 003's ctrl-Z): netback's drain timeout must free what waits. */
export interface StalledReceiverFault {
  readonly type: 'stalled-receiver';
  readonly at: number;
  readonly dur: number;
  readonly g: number;
}

/** Guest `g`'s worker dies mid-traffic; the slot boots a new domain `restart` ms later. */
export interface GuestKillFault {
  readonly type: 'guest-kill';
  readonly at: number;
  readonly g: number;
  readonly restart: number;
}

/**
 * The backend's worker dies; `release` ms later the hypervisor kills its domain (its grant mappings and event
 * channels go), and `restart` ms after the death a new backend starts and every guest reconnects.
 */
export interface BackendKillFault {
  readonly type: 'backend-kill';
  readonly at: number;
  readonly release: number;
  readonly restart: number;
}

/** Guest `g` ends access to up to `n` of its grants that the backend still maps: refused, they must end later. */
export interface RevokeMappedFault {
  readonly type: 'revoke-mapped';
  readonly at: number;
  readonly g: number;
  readonly n: number;
}

/** Guest `g` notifies its backend port `n` times per ms for `dur` ms. */
export interface EventStormFault {
  readonly type: 'event-storm';
  readonly at: number;
  readonly dur: number;
  readonly g: number;
  readonly n: number;
}

/** One fault of a schedule; `at` is ms after traffic starts. */
export type FaultEvent =
  | LossFault
  | NicStallFault
  | TapHoldFault
  | SlowReceiverFault
  | StalledReceiverFault
  | GuestKillFault
  | BackendKillFault
  | RevokeMappedFault
  | EventStormFault;

/** Longest schedule, ms (the stress tool's --seconds limit). */
export const MAX_FAULT_TIME_MS = 3_600_000;
/** Most guest slots a schedule may name. */
export const MAX_FAULT_GUEST = 64;

// The parameters of each type, in canonical order, with their bounds. `p` is a decimal; all others integers.
interface KeySpec {
  readonly lo: number;
  readonly hi: number;
  readonly decimal?: boolean;
}

const KEY_SPECS: Readonly<Record<string, KeySpec>> = {
  dur: { lo: 1, hi: MAX_FAULT_TIME_MS },
  p: { lo: 0, hi: 1, decimal: true },
  hold: { lo: 0, hi: 60_000 },
  g: { lo: 1, hi: MAX_FAULT_GUEST },
  every: { lo: 1, hi: 60_000 },
  restart: { lo: 0, hi: 600_000 },
  release: { lo: 0, hi: 600_000 },
  n: { lo: 1, hi: 100_000 },
};

/** The keys each type takes, in the order they print. */
export const FAULT_KEYS: Readonly<Record<FaultType, readonly string[]>> = {
  loss: ['dur', 'p'],
  'nic-stall': ['dur'],
  'tap-hold': ['dur', 'hold'],
  'slow-receiver': ['g', 'dur', 'every'],
  'stalled-receiver': ['g', 'dur'],
  'guest-kill': ['g', 'restart'],
  'backend-kill': ['release', 'restart'],
  'revoke-mapped': ['g', 'n'],
  'event-storm': ['g', 'dur', 'n'],
};

const DECIMAL = /^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$/;
const INTEGER = /^[0-9]+$/;

function isFaultType(s: string): s is FaultType {
  return (FAULT_TYPES as readonly string[]).includes(s);
}

/** One event in its canonical text form, e.g. `12000 loss dur=3000 p=0.05`. */
export function formatFaultEvent(e: FaultEvent): string {
  const fields = e as unknown as Readonly<Record<string, number>>;
  const parts = [String(e.at), e.type];
  for (const k of FAULT_KEYS[e.type]) parts.push(`${k}=${fields[k]!}`);
  return parts.join(' ');
}

/** A whole schedule, one event per line (empty string for none). */
export function formatFaultSchedule(events: readonly FaultEvent[]): string {
  return events.map(formatFaultEvent).join('\n');
}

/** Parses one event line; errors are exact (`unknown fault type "x"`, `loss needs p`...). */
export function parseFaultEvent(line: string): Result<FaultEvent> {
  const words = line.trim().split(/\s+/);
  const atRaw = words[0] ?? '';
  if (!INTEGER.test(atRaw) || Number(atRaw) > MAX_FAULT_TIME_MS) {
    return err(`time must be an integer number of ms in [0, ${MAX_FAULT_TIME_MS}] but got "${atRaw}"`);
  }
  const type = words[1];
  if (type === undefined) return err('missing fault type after the time');
  if (!isFaultType(type)) return err(`unknown fault type "${type}": expected one of ${FAULT_TYPES.join(', ')}`);
  const keys = FAULT_KEYS[type];
  const out: Record<string, number | string> = { type, at: Number(atRaw) };
  for (const w of words.slice(2)) {
    const eq = w.indexOf('=');
    const k = eq < 0 ? w : w.slice(0, eq);
    if (eq < 0) return err(`${type}: expected key=value but got "${w}"`);
    if (!keys.includes(k)) return err(`${type} takes no key "${k}": expected ${keys.join(', ')}`);
    if (k in out) return err(`${type}: key "${k}" is given twice`);
    const v = w.slice(eq + 1);
    const spec = KEY_SPECS[k]!;
    const okSyntax = spec.decimal === true ? DECIMAL.test(v) : INTEGER.test(v);
    const num = Number(v);
    if (!okSyntax || !(num >= spec.lo && num <= spec.hi)) {
      const what = spec.decimal === true ? 'a number' : 'an integer';
      return err(`${type}: ${k} must be ${what} in [${spec.lo}, ${spec.hi}] but got "${v}"`);
    }
    out[k] = num;
  }
  for (const k of keys) if (!(k in out)) return err(`${type} needs ${k}`);
  return ok(out as unknown as FaultEvent);
}

/**
 * Parses a schedule: events separated by newlines or `;`, blank lines and `#` comments ignored. Errors name the
 * event (`event 3: ...`). The events come back sorted by time (stable), as they are applied.
 */
export function parseFaultSchedule(text: string): Result<FaultEvent[]> {
  const events: FaultEvent[] = [];
  let n = 0;
  for (const raw of text.split(/[\n;]/)) {
    const hash = raw.indexOf('#');
    const line = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
    if (line === '') continue;
    n++;
    const e = parseFaultEvent(line);
    if (!e.ok) return err(`event ${n}: ${e.error}`);
    events.push(e.value);
  }
  return ok(sortFaults(events));
}

/** The events sorted by time; events at the same time keep their order. */
export function sortFaults(events: readonly FaultEvent[]): FaultEvent[] {
  return events.map((e, i) => [e, i] as const).sort((a, b) => a[0].at - b[0].at || a[1] - b[1]).map(([e]) => e);
}

/** How many events of each type, every type present (0 for none), in FAULT_TYPES order. */
export function countFaults(events: readonly FaultEvent[]): Record<FaultType, number> {
  const counts = Object.fromEntries(FAULT_TYPES.map((t) => [t, 0])) as Record<FaultType, number>;
  for (const e of events) counts[e.type]++;
  return counts;
}

/** The guest slot an event targets, or 0 for a fault of the backend or the uplink. */
export function faultGuest(e: FaultEvent): number {
  return 'g' in e ? e.g : 0;
}

/** How long an event keeps the system disturbed after `at`, ms, including the time to recover from it. */
export function faultSpan(e: FaultEvent): number {
  switch (e.type) {
    case 'guest-kill':
      return e.restart + FAULT_RECOVERY_MS;
    case 'backend-kill':
      return Math.max(e.release, e.restart) + FAULT_RECOVERY_MS;
    case 'revoke-mapped':
      return 1;
    default:
      return e.dur;
  }
}

/** Time allowed after a kill's restart for the new domain to boot and every vif to connect again, ms. */
export const FAULT_RECOVERY_MS = 2000;

// ---- The generator -----------------------------------------------------------------------------------------

/** Options of makeFaultSchedule. */
export interface FaultScheduleOptions {
  /** Extra events per minute beyond one of each type (default 6). */
  readonly extraPerMinute?: number;
  /** No event starts before this, ms (default min(2000, 10% of the run)). */
  readonly warmupMs?: number;
  /** Every event's span ends this long before the run does, ms (default min(5000, 15% of the run)). */
  readonly cooldownMs?: number;
}

// Whether two events may not overlap: a backend-kill excludes everything; a guest-kill excludes anything aimed at
// the same slot; two windows of the same backend fault, or two guest faults on one slot, would undo each other.
function conflicts(a: FaultEvent, b: FaultEvent): boolean {
  const overlap = a.at < b.at + faultSpan(b) && b.at < a.at + faultSpan(a);
  if (!overlap) return false;
  if (a.type === 'backend-kill' || b.type === 'backend-kill') return true;
  const ga = faultGuest(a);
  const gb = faultGuest(b);
  if (ga !== 0 && ga === gb) return true;
  return ga === 0 && gb === 0 && a.type === b.type;
}

const ms = (s: number): number => Math.round(s * 1000);

// A candidate event of `type` at time 0 with seeded parameters; durations scale with the run's length.
function candidate(type: FaultType, r: Random, guests: number, runMs: number): FaultEvent {
  const scale = Math.min(1, runMs / 60_000);
  const dur = (lo: number, hi: number): number => Math.max(1, Math.round(r.int(ms(lo), ms(hi)) * scale));
  const g = r.int(1, guests);
  switch (type) {
    case 'loss':
      return { type, at: 0, dur: dur(1, 5), p: r.int(1, 30) / 100 };
    case 'nic-stall':
      return { type, at: 0, dur: dur(0.2, 3) };
    case 'tap-hold':
      return { type, at: 0, dur: dur(1, 5), hold: r.int(200, 2000) };
    case 'slow-receiver':
      return { type, at: 0, g, dur: dur(2, 8), every: r.int(2, 20) };
    case 'stalled-receiver':
      // Longer than netback's 10 s drain timeout whenever the run allows, so the timeout is what frees the pages.
      return { type, at: 0, g, dur: runMs >= 30_000 ? r.int(12_000, 16_000) : Math.max(1, Math.round(runMs * r.int(20, 30) / 100)) };
    case 'guest-kill':
      return { type, at: 0, g, restart: r.int(200, 2000) };
    case 'backend-kill': {
      const restart = r.int(300, 2000);
      return { type, at: 0, release: r.int(0, restart), restart };
    }
    case 'revoke-mapped':
      return { type, at: 0, g, n: r.int(1, 8) };
    case 'event-storm':
      return { type, at: 0, g, dur: dur(0.2, 2), n: r.int(16, 256) };
  }
}

/**
 * A seeded fault schedule for a run of `seconds` with `guests` guest slots: one event of every type (when the run
 * leaves room for it) plus `extraPerMinute` more of random types, placed at random times between the warm-up and the
 * cool-down so that no two conflicting events overlap (nothing during a backend restart, nothing aimed at a guest
 * while its slot reboots). The same arguments always give the same schedule.
 */
export function makeFaultSchedule(seed: number, seconds: number, guests: number, opts: FaultScheduleOptions = {}): FaultEvent[] {
  if (!Number.isInteger(guests) || guests < 1 || guests > MAX_FAULT_GUEST) {
    throw new RangeError(`guests must be an integer in [1, ${MAX_FAULT_GUEST}] but got ${guests}`);
  }
  const runMs = ms(seconds);
  if (!(runMs > 0) || runMs > MAX_FAULT_TIME_MS) throw new RangeError(`seconds must be in (0, ${MAX_FAULT_TIME_MS / 1000}] but got ${seconds}`);
  const r = new Random((seed ^ 0x6661756c) >>> 0); // "faul": a stream of its own, apart from the run's other draws
  const warm = opts.warmupMs ?? Math.min(2000, Math.round(runMs * 0.1));
  const cool = opts.cooldownMs ?? Math.min(5000, Math.round(runMs * 0.15));
  // One of each type first, the ones that need the most room (and exclude the most) ahead, the rest in seeded order.
  const roomy: FaultType[] = ['backend-kill', 'guest-kill', 'stalled-receiver', 'slow-receiver'];
  const rest = FAULT_TYPES.filter((t) => !roomy.includes(t));
  for (let i = rest.length - 1; i > 0; i--) {
    const j = r.int(0, i);
    [rest[i], rest[j]] = [rest[j]!, rest[i]!];
  }
  const wanted: FaultType[] = [...roomy, ...rest];
  const extra = Math.floor(((opts.extraPerMinute ?? 6) * runMs) / 60_000);
  for (let i = 0; i < extra; i++) {
    const t = r.pick(FAULT_TYPES);
    // At most one backend restart per 20 s on average: each one costs every guest a reconnect.
    wanted.push(t === 'backend-kill' && r.chance(0.5) ? 'loss' : t);
  }
  const placed: FaultEvent[] = [];
  const fits = (e: FaultEvent): boolean => placed.every((p) => !conflicts(p, e));
  for (const type of wanted) {
    let c = candidate(type, r, guests, runMs);
    for (let shrinks = 0; shrinks < 8; shrinks++, c = shrink(c)) {
      const latest = runMs - cool - faultSpan(c);
      if (latest < warm) continue;
      let e: FaultEvent | null = null;
      for (let attempt = 0; attempt < 32 && e === null; attempt++) {
        const x = { ...c, at: r.int(warm, latest) } as FaultEvent;
        if (fits(x)) e = x;
      }
      // Random times missed: the first time that fits, scanning from a random start.
      const step = Math.max(1, Math.floor((latest - warm) / 512));
      const from = r.int(warm, latest);
      for (let k = 0; e === null && k <= latest - warm; k += step) {
        const x = { ...c, at: warm + ((from - warm + k) % (latest - warm + 1)) } as FaultEvent;
        if (fits(x)) e = x;
      }
      if (e !== null) {
        placed.push(e);
        break;
      }
    }
  }
  return sortFaults(placed);
}

// The same fault over half the time (windows and restarts), for runs too short for the full one.
function shrink(e: FaultEvent): FaultEvent {
  const half = (x: number): number => Math.max(1, Math.floor(x / 2));
  switch (e.type) {
    case 'guest-kill':
      return { ...e, restart: Math.floor(e.restart / 2) };
    case 'backend-kill':
      return { ...e, release: Math.floor(e.release / 2), restart: Math.floor(e.restart / 2) };
    case 'revoke-mapped':
      return e;
    default:
      return { ...e, dur: half(e.dur) };
  }
}

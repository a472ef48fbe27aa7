// Helpers of the simulator's fault tests: a short run with a schedule given as text, and the event log's fields.
import { parseFaultSchedule, type FaultEvent } from '../../../tools/sim/faults.js';
import { runSim, type SimReport } from '../../../tools/sim/run.js';

/** Parses a schedule's text (the test's own schedules are valid). */
export function schedule(text: string): FaultEvent[] {
  const r = parseFaultSchedule(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** 3 virtual seconds, 3 guests, seed 21, the given schedule. */
export async function sim(text: string, over: Partial<Parameters<typeof runSim>[0]> = {}): Promise<SimReport> {
  return runSim({ seed: 21, seconds: 3, guests: 3, schedule: schedule(text), ...over });
}

/** The key=value fields of the first log line that starts (after its time) with `prefix`. */
export function fields(r: SimReport, prefix: string): Record<string, string> {
  const line = r.eventLog.split('\n').find((l) => l.slice(l.indexOf(' ') + 1).startsWith(prefix));
  if (line === undefined) throw new Error(`no log line "${prefix}"`);
  const out: Record<string, string> = {};
  for (const w of line.split(' ').slice(3)) {
    const eq = w.indexOf('=');
    if (eq > 0) out[w.slice(0, eq)] = w.slice(eq + 1);
  }
  return out;
}

/** No error, a clean audit, and granted == returned. */
export function assertClean(t: { true: (v: boolean, m?: string) => void; deepEqual: (a: unknown, b: unknown) => void }, r: SimReport): void {
  t.deepEqual(r.errors, []);
  t.true(r.clean, JSON.stringify(r.audit));
  t.true(r.audit.granted === r.audit.returned, 'granted == returned');
}

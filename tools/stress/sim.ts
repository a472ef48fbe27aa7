// --sim: the same guests, backend and stack code in one thread under the seeded scheduler on virtual time (tools/sim
// runSim), with the same schedule; one seed gives one execution, so its JSON is the same on every run.
import { ADVERSARY_CASES } from '../../frontend/adversary.js';
import { runSim, type FaultEvent } from '../sim/index.js';
import type { StressArgs, StressIo, StressOutcome } from './cli.js';

/** Runs the simulator for the command line's arguments and schedule. */
export async function simMode(args: StressArgs, schedule: FaultEvent[], io: StressIo): Promise<StressOutcome> {
  const r = await runSim({
    seed: args.seed,
    seconds: args.seconds,
    guests: args.guests,
    schedule,
    design: args.design,
    adversary: args.adversary,
    ...(args.mix !== null && { mix: args.mix }),
    ...(args.cases !== null && { adversaryCases: ADVERSARY_CASES.filter((c) => args.cases!.includes(c.name)) }),
    onProgress: (p) => io.err(`${p.virtualSeconds.toFixed(0).padStart(4)} s (virtual)  ${p.packets} packets  outstanding ${p.outstanding}`),
  });
  const errors = [...r.errors, ...r.adversaryFailures];
  if (r.backendCrashes > r.adversary.backendCrashes) errors.push(`${r.backendCrashes} backend crashes no fault injected`);
  return {
    mode: 'sim',
    seed: r.seed,
    seconds: r.seconds,
    guests: r.guests,
    design: args.design,
    packets: r.packets,
    bytes: r.bytes,
    audit: r.audit,
    faults: r.faults,
    adversary: { cases: r.adversary.cases, handled: r.adversary.handled, backendCrashes: Math.max(r.adversary.backendCrashes, r.backendCrashes) },
    failedCases: r.adversaryFailedCases,
    errors,
    notes: [`event log: ${r.eventLog.split('\n').length} lines`],
  };
}

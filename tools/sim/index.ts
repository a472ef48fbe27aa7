// The simulator's public face for the stress tool (tools/stress.ts): runSim for `--sim`, and the seeded fault
// schedule both modes apply (make, print, parse, count).
export { runSim, SIM_MAX_GUESTS, SIM_MAX_SECONDS, type SimOptions, type SimProgress, type SimReport } from './run.js';
export {
  FAULT_KEYS,
  FAULT_TYPES,
  countFaults,
  faultGuest,
  faultSpan,
  formatFaultEvent,
  formatFaultSchedule,
  makeFaultSchedule,
  parseFaultEvent,
  parseFaultSchedule,
  sortFaults,
  type FaultEvent,
  type FaultScheduleOptions,
  type FaultType,
} from './faults.js';
export { simAudit, simAuditClean, type SimAudit } from './audit.js';
export { SIM_AGGREGATE_RATE, simDefaultRate } from './world.js';

// The simulator's audit: the demo's seven figures (tools/start.ts StartSummary.audit), summed across every
// incarnation of every guest and of the backend. A killed guest's counters are what it had when it died; a killed
// backend's oracle figures are what it had seen when it died (its leak check never runs: its mappings are released
// by the hypervisor, and the guests' side of the books shows whether they all came back).
//
// `returned` counts every grant that came back to its owner: handed back by a backend (grant-return notice),
// reclaimed by the guest at a disconnect once nothing mapped it (end access succeeded), or, for a killed guest, every
// grant it still had out when it died once nothing maps it any more (the backend unmapped them as the stack freed
// the pages). So a clean run has granted == returned and outstanding == 0.

/** The demo's audit figures (tools/start.ts), summed over incarnations. */
export interface SimAudit {
  readonly granted: number;
  readonly returned: number;
  readonly outstanding: number;
  readonly leaked: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly corruptPayloads: number;
}

/** One guest incarnation's books, at the end of the run or at its death. */
export interface GuestTally {
  readonly dead: boolean;
  /** TX grants made, returned by a backend, reclaimed at a disconnect, and still out (at the end or at death). */
  readonly granted: number;
  readonly returned: number;
  readonly reclaimed: number;
  readonly outstanding: number;
  /** Pages whose grant could not be ended at the end of the run (still mapped): a live guest's leak. */
  readonly stuck: number;
  /** A killed guest: entries of its grant table still mapped (GTF_reading/GTF_writing) at the end of the run. */
  readonly stillMapped: number;
  /** Returned grants the backend still mapped (end access failed): early returns seen by the guest. */
  readonly endAccessFailures: number;
  /** Returns naming a grant that was not outstanding: double returns seen by the guest. */
  readonly badGrantReturns: number;
  readonly corruptPayloads: number;
}

/** One backend incarnation's oracle figures and what the uplink found corrupt. */
export interface BackendTally {
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  /** The oracle's quiescence check (only the last incarnation runs it; a killed one reports 0). */
  readonly leaks: number;
  readonly corruptPayloads: number;
}

/** Sums the tallies into the audit (see the module comment for what `returned` counts). */
export function simAudit(guests: readonly GuestTally[], backends: readonly BackendTally[]): SimAudit {
  let granted = 0;
  let returned = 0;
  let outstanding = 0;
  let leaked = 0;
  let early = 0;
  let double = 0;
  let corrupt = 0;
  for (const g of guests) {
    granted += g.granted;
    returned += g.returned + g.reclaimed;
    if (g.dead) {
      // Its grants end with the domain, once nothing maps them; until then they are out, and mapped ones leak.
      if (g.stillMapped === 0) returned += g.outstanding;
      else outstanding += g.outstanding;
      leaked += g.stillMapped;
    } else {
      outstanding += g.outstanding;
      leaked += g.stuck;
    }
    early += g.endAccessFailures;
    double += g.badGrantReturns;
    corrupt += g.corruptPayloads;
  }
  for (const b of backends) {
    early += b.earlyReturns;
    double += b.doubleReturns;
    leaked += b.leaks;
    corrupt += b.corruptPayloads;
  }
  return { granted, returned, outstanding, leaked, earlyReturns: early, doubleReturns: double, corruptPayloads: corrupt };
}

/** Whether the audit passed (tools/start.ts auditClean's rule): nothing leaked, early, double, corrupt or outstanding. */
export function simAuditClean(a: SimAudit): boolean {
  return a.leaked === 0 && a.earlyReturns === 0 && a.doubleReturns === 0 && a.corruptPayloads === 0 && a.outstanding === 0;
}

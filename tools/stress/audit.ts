// The audit of a stress run across deaths: every guest (the killed ones too) and every backend incarnation.
import type { BackendReport } from '../../backend/loop.js';
import type { GuestReport } from '../../frontend/loop.js';
import { BACKEND_DOMID, mappedEntries, type Toolstack } from '../toolstack.js';

/** The audit of a stress run: the demo's figures, summed over every guest and every backend incarnation. */
export interface StressAudit {
  readonly granted: number;
  readonly returned: number;
  readonly outstanding: number;
  readonly leaked: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly corruptPayloads: number;
}

/**
 * The audit across deaths. Live guests: granted, returned plus reclaimed (ended at a disconnect after the backend
 * let go or died), outstanding. Dead guests: their counters at death, and their grants still out then count as
 * returned once nothing maps them any more (no entry of their table still has GTF_reading/GTF_writing for the
 * backend after it finished, or after the hypervisor released a dead backend's mappings); each entry still mapped is
 * a leak. The oracle's figures are summed over backend incarnations: a dead backend's as it last reported them.
 */
export function stressAudit(live: readonly GuestReport[], ts: Pick<Toolstack, 'dead' | 'backends'>, last: BackendReport | null): StressAudit {
  let granted = 0;
  let returned = 0;
  let outstanding = 0;
  let leaked = 0;
  let early = 0;
  let double = 0;
  let corrupt = 0;
  for (const g of live) {
    granted += g.granted;
    returned += g.returned + (g.reclaimed ?? 0);
    outstanding += g.outstanding;
    early += g.earlyReturns;
    double += g.doubleReturns;
    corrupt += g.corruptPayloads;
  }
  for (const dg of ts.dead) {
    const g = dg.report;
    const still = dg.table === null ? 0 : mappedEntries(dg.table, BACKEND_DOMID).length;
    granted += g.granted;
    returned += g.returned + (g.reclaimed ?? 0) + (still === 0 ? g.outstanding : 0);
    outstanding += still === 0 ? 0 : g.outstanding;
    leaked += still;
    early += g.earlyReturns;
    double += g.doubleReturns;
    corrupt += g.corruptPayloads;
  }
  const backends = ts.backends;
  for (let i = 0; i < backends.length; i++) {
    const b = backends[i]!;
    const isLast = i === backends.length - 1;
    if (isLast && last !== null) {
      leaked += last.oracle.leaks;
      early += last.oracle.earlyReturns;
      double += last.oracle.doubleReturns;
      corrupt += last.corruptPayloads;
      continue;
    }
    const a = b.lastStats?.audit;
    if (a === undefined) continue;
    leaked += a.leaks;
    early += a.earlyReturns;
    double += a.doubleReturns;
    corrupt += a.corruptPayloads;
  }
  return { granted, returned, outstanding, leaked, earlyReturns: early, doubleReturns: double, corruptPayloads: corrupt };
}

// The grant-lifetime oracle: an independent check of WHEN netback hands a mapped guest grant back.
//
// It shares no code with the mechanism (page/skbuff/release are imported as types only) and never looks at
// the mechanism's bookkeeping (reference counts, shinfo destructors or parent links). It only walks the
// structure that really matters: a foreign page is reachable while a frag slot of a live skb's shinfo, or
// of an skb on the frag_list chain of such a shinfo (recursively), points at it. Live skbs are the roots
// their holders own. Handing a grant back while its page is reachable lets the guest reuse memory the
// stack can still read (use-after-free of guest memory).
//
// Hot path: dense typed arrays indexed by Page.id and an epoch mark, so one reachability pass costs a few
// ns per frag and serves a whole flushed batch of returns.
import type { Page } from './page.js';
import type { SkBuff, SkbSharedInfo } from './skbuff.js';

/** The kinds of grant-lifetime violation the oracle reports. */
export type GrantViolationKind = 'early-return' | 'double-return' | 'leak';

/** One violation, with the grant it concerns and the harness step at which it was seen. */
export interface GrantViolation {
  readonly kind: GrantViolationKind;
  readonly pageId: number;
  readonly domid: number;
  readonly gref: number;
  readonly step: number;
  readonly message: string;
}

/** Counters and the first violations seen by one oracle. */
export interface OracleReport {
  /** Grants noted as mapped (incarnations). */
  readonly mapped: number;
  /** Grants noted as handed back (valid or not). */
  readonly returned: number;
  readonly earlyReturns: number;
  readonly doubleReturns: number;
  readonly leaks: number;
  /** Mapped grants that were unreachable but not yet handed back at the last late scan (promptness, not a violation). */
  readonly late: number;
  /** The sum of `late` over every late scan (page-scans spent waiting to be returned). */
  readonly lateTotal: number;
  /** The first `maxRecorded` violations, in order. */
  readonly violations: readonly GrantViolation[];
}

/** Options for a GrantOracle. */
export interface GrantOracleOptions {
  /** How many violations to keep with their messages (counters keep counting). Default 16. */
  readonly maxRecorded?: number;
}

// Per-page incarnation state.
const UNMAPPED = 0; // never mapped, or handed back
const MAPPED = 1; // a grant is mapped onto this Page object and was not handed back
const LEAKED = 2; // reported as leaked at quiescence; a later return is not a double return

// Bounds on a structure walk: a frag_list cycle or absurd depth is a mechanism bug, not a reachability fact.
const MAX_FRAG_LIST_DEPTH = 64;
const MAX_FRAG_LIST_CHAIN = 1 << 16;

/** Tracks mapped grants by Page.id and checks each hand-back against the skb structure reachable from the roots. */
export class GrantOracle {
  /** The harness step (or batch number) stamped on violations; set it before noting events. */
  step = 0;

  private readonly roots: () => Iterable<SkBuff>;
  private readonly maxRecorded: number;
  private state = new Uint8Array(64);
  private domids = new Int32Array(64);
  private grefs = new Int32Array(64);
  private mappedAt = new Int32Array(64).fill(-1); // -1: never mapped
  private marks = new Uint32Array(64);
  private epoch = 0;
  private highest = -1; // the highest page id ever mapped

  private nMapped = 0;
  private nReturned = 0;
  private nEarly = 0;
  private nDouble = 0;
  private nLeaks = 0;
  private nLate = 0;
  private nLateTotal = 0;
  private readonly recorded: GrantViolation[] = [];

  /** `roots` yields every live skb its holders own (duplicates are harmless); it is called once per check. */
  constructor(roots: () => Iterable<SkBuff>, opts: GrantOracleOptions = {}) {
    this.roots = roots;
    this.maxRecorded = opts.maxRecorded ?? 16;
  }

  /** Netback mapped the grant `page.foreign` onto `page`: a new incarnation starts. Throws if it is still mapped. */
  noteMapped(page: Page): void {
    const id = page.id;
    const g = page.foreign;
    if (g === null) throw new Error(`oracle: page ${id} noted as mapped but has no foreign grant`);
    this.grow(id);
    if (this.state[id] === MAPPED) {
      throw new Error(`oracle: page ${id} mapped to gref ${g.gref} while gref ${this.grefs[id]} is still mapped on it`);
    }
    this.state[id] = MAPPED;
    this.domids[id] = g.domid;
    this.grefs[id] = g.gref;
    this.mappedAt[id] = this.step;
    if (id > this.highest) this.highest = id;
    this.nMapped++;
  }

  /** The grant mapped on `page` is being handed back to its guest now; checks it. Returns false on a violation. */
  noteReturned(page: Page): boolean {
    this.computeReachable();
    return this.checkReturn(page);
  }

  /** Checks a flushed batch of hand-backs against one reachability pass; returns the number of violations. */
  noteReturnedBatch(pages: readonly Page[], n: number = pages.length): number {
    if (n === 0) return 0;
    this.computeReachable();
    let bad = 0;
    for (let i = 0; i < n; i++) if (!this.checkReturn(pages[i]!)) bad++;
    return bad;
  }

  /** At quiescence: every mapped grant whose page nothing reaches is a leak; returns how many were found. */
  checkQuiescent(): number {
    this.computeReachable();
    let found = 0;
    for (let id = 0; id <= this.highest; id++) {
      if (this.state[id] !== MAPPED || this.marks[id] === this.epoch) continue;
      this.state[id] = LEAKED;
      this.nLeaks++;
      found++;
      this.record(
        'leak',
        id,
        `leak of gref ${this.grefs[id]} (domid ${this.domids[id]}, page ${id}): mapped at step ${this.mappedAt[id]}, ` +
          `unreachable and not returned at quiescence (step ${this.step})`,
      );
    }
    return found;
  }

  /** Counts mapped grants that nothing reaches but that were not handed back yet (late, not a violation). */
  scanLate(): number {
    this.computeReachable();
    let late = 0;
    for (let id = 0; id <= this.highest; id++) if (this.state[id] === MAPPED && this.marks[id] !== this.epoch) late++;
    this.nLate = late;
    this.nLateTotal += late;
    return late;
  }

  /** The result of the last `scanLate`. */
  lateCount(): number {
    return this.nLate;
  }

  /** Whether a live root can read `page` right now (one reachability pass). */
  isReachable(page: Page): boolean {
    this.computeReachable();
    return page.id < this.marks.length && this.marks[page.id] === this.epoch;
  }

  /** Whether the oracle considers a grant mapped on `page` (noted mapped, not yet handed back). */
  isMapped(page: Page): boolean {
    return page.id < this.state.length && this.state[page.id] === MAPPED;
  }

  /** Early + double returns + leaks so far. */
  get violationCount(): number {
    return this.nEarly + this.nDouble + this.nLeaks;
  }

  /** A snapshot of the counters and the recorded violations. */
  get report(): OracleReport {
    return {
      mapped: this.nMapped,
      returned: this.nReturned,
      earlyReturns: this.nEarly,
      doubleReturns: this.nDouble,
      leaks: this.nLeaks,
      late: this.nLate,
      lateTotal: this.nLateTotal,
      violations: this.recorded.slice(),
    };
  }

  private checkReturn(page: Page): boolean {
    const id = page.id;
    this.grow(id);
    this.nReturned++;
    const st = this.state[id];
    if (st === LEAKED) {
      // Already counted as a leak at quiescence; the grant comes back late, not twice.
      this.state[id] = UNMAPPED;
      return true;
    }
    if (st !== MAPPED) {
      this.nDouble++;
      const what =
        this.mappedAt[id] === -1
          ? `double return of page ${id} at step ${this.step}: no grant was ever mapped on it`
          : `double return of gref ${this.grefs[id]} (domid ${this.domids[id]}, page ${id}) at step ${this.step}: ` +
            `it was already handed back`;
      this.record('double-return', id, what);
      return false;
    }
    this.state[id] = UNMAPPED;
    if (this.marks[id] === this.epoch) {
      this.nEarly++;
      this.record(
        'early-return',
        id,
        `early return of gref ${this.grefs[id]} (domid ${this.domids[id]}, page ${id}) at step ${this.step}: ` +
          `still reachable from ${this.explain(id)}`,
      );
      return false;
    }
    return true;
  }

  private record(kind: GrantViolationKind, id: number, message: string): void {
    if (this.recorded.length >= this.maxRecorded) return;
    this.recorded.push({ kind, pageId: id, domid: this.domids[id]!, gref: this.grefs[id]!, step: this.step, message });
  }

  /** One reachability pass: marks[id] === epoch afterwards for every page a root reaches. */
  private computeReachable(): void {
    this.epoch = (this.epoch + 1) >>> 0;
    if (this.epoch === 0) {
      this.marks.fill(0);
      this.epoch = 1;
    }
    for (const root of this.roots()) this.markShinfo(root.shinfo, 0);
  }

  private markShinfo(sh: SkbSharedInfo, depth: number): void {
    const n = sh.nrFrags;
    const frags = sh.frags;
    if (!(n >= 0 && n <= frags.length)) throw new Error(`oracle: nrFrags is corrupt: expected 0 <= x <= ${frags.length} but got ${n}`);
    const epoch = this.epoch;
    for (let i = 0; i < n; i++) {
      const id = frags[i]!.page.id;
      if (id >= this.marks.length) this.grow(id);
      this.marks[id] = epoch;
    }
    let chain = 0;
    for (let f = sh.fragList; f !== null; f = f.next) {
      if (depth >= MAX_FRAG_LIST_DEPTH) throw new Error(`oracle: frag_list nesting deeper than ${MAX_FRAG_LIST_DEPTH}`);
      if (++chain > MAX_FRAG_LIST_CHAIN) throw new Error(`oracle: frag_list chain longer than ${MAX_FRAG_LIST_CHAIN} (a cycle?)`);
      this.markShinfo(f.shinfo, depth + 1);
    }
  }

  /** Cold path for messages: the first root and path through which page `id` is reachable. */
  private explain(id: number): string {
    let r = 0;
    for (const root of this.roots()) {
      const p = findPath(root.shinfo, id, 0);
      if (p !== null) return `root ${r} ${p}`;
      r++;
    }
    return 'a root (path not found on re-walk)';
  }

  private grow(id: number): void {
    if (id < 0 || !Number.isInteger(id)) throw new Error(`oracle: page id is corrupt: expected a non-negative integer but got ${id}`);
    if (id < this.state.length) return;
    let size = this.state.length;
    while (size <= id) size *= 2;
    this.state = growU8(this.state, size);
    this.domids = growI32(this.domids, size, 0);
    this.grefs = growI32(this.grefs, size, 0);
    this.mappedAt = growI32(this.mappedAt, size, -1);
    const marks = new Uint32Array(size);
    marks.set(this.marks);
    this.marks = marks;
  }
}

function findPath(sh: SkbSharedInfo, id: number, depth: number): string | null {
  for (let i = 0; i < sh.nrFrags; i++) if (sh.frags[i]!.page.id === id) return `frags[${i}]`;
  if (depth >= MAX_FRAG_LIST_DEPTH) return null;
  let k = 0;
  for (let f = sh.fragList; f !== null && k < MAX_FRAG_LIST_CHAIN; f = f.next, k++) {
    const p = findPath(f.shinfo, id, depth + 1);
    if (p !== null) return `frag_list[${k}] ${p}`;
  }
  return null;
}

function growU8(a: Uint8Array<ArrayBuffer>, size: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(size);
  b.set(a);
  return b;
}

function growI32(a: Int32Array<ArrayBuffer>, size: number, fill: number): Int32Array<ArrayBuffer> {
  const b = new Int32Array(size);
  if (fill !== 0) b.fill(fill);
  b.set(a);
  return b;
}

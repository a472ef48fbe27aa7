// Promptness: how late grants go back. For every mapped grant the lab records the step and the (virtual) time at
// which a scan first found its page unreachable, and at its return the delay since then. The scan walks the same
// roots as the grant oracle (every live skb a holder owns: its frags and, recursively, its frag_list) once per
// lab step and marks reachable pages by Page.id in dense typed arrays; mapped pages are the ones netback noted
// mapped and has not handed back. Independent of the release designs: it reads skb structure only.
import type { Page } from '../../backend/page.js';
import type { SkBuff, SkbSharedInfo } from '../../backend/skbuff.js';

/** Never stamped: the page was not (yet) seen unreachable while mapped. */
const NONE = -1;
// Bounds on a structure walk, as the oracle's: deeper or longer means a mechanism bug, not a fact.
const MAX_FRAG_LIST_DEPTH = 64;
const MAX_FRAG_LIST_CHAIN = 1 << 16;

/** Delay quantiles over every returned grant (a grant returned in the step it became unreachable counts 0). */
export interface DelayQuantiles {
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

/** What the tracker measured. */
export interface PromptnessSummary {
  /** Grants handed back that the tracker saw mapped. */
  readonly returned: number;
  /** Of those, returned at least one step after a scan found their page unreachable. */
  readonly heldLate: number;
  /** Delays in lab steps and in ms of virtual time. */
  readonly steps: DelayQuantiles;
  readonly ms: DelayQuantiles;
  /** Mean delay in steps (equals the oracle-style sum of late page-scans divided by returns). */
  readonly meanSteps: number;
}

/** Nearest-rank quantile of sorted values (0 for none): the smallest value with at least q of them at or below it. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return 0;
  const rank = Math.min(n, Math.max(1, Math.ceil(q * n)));
  return sorted[rank - 1]!;
}

/** A growable Float64Array list (no boxing of numbers). */
class NumberList {
  private a = new Float64Array(256);
  length = 0;

  push(v: number): void {
    if (this.length === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.length++] = v;
  }

  /** A sorted copy of the values. */
  sorted(): Float64Array {
    return this.a.slice(0, this.length).sort();
  }
}

/** Per-page records of when grants became unreachable and when they went back; see the file comment. */
export class PromptnessTracker {
  // Indexed by Page.id.
  private mapped = new Uint8Array(64);
  private unreachStep = new Float64Array(64).fill(NONE);
  private unreachTime = new Float64Array(64);
  private marks = new Uint32Array(64);
  private epoch = 0;
  // Dense list of mapped page ids, with each id's position in it, so a scan visits mapped pages only.
  private list = new Int32Array(64);
  private pos = new Int32Array(64).fill(-1);
  private count = 0;
  private readonly delaySteps = new NumberList();
  private readonly delayMs = new NumberList();
  private late = 0;
  private readonly markRoot = (skb: SkBuff): void => this.markShinfo(skb.shinfo, 0);

  /** Netback mapped a grant onto `page`. */
  noteMapped(page: Page): void {
    const id = page.id;
    this.grow(id);
    if (this.mapped[id] === 1) return; // a remap without a return: the oracle reports it, not us
    this.mapped[id] = 1;
    this.unreachStep[id] = NONE;
    this.list[this.count] = id;
    this.pos[id] = this.count++;
  }

  /** Netback hands back the grants of pages[0..n) during lab step `step` at time `now` (ms). */
  noteReturned(pages: readonly Page[], n: number, step: number, now: number): void {
    for (let i = 0; i < n; i++) {
      const id = pages[i]!.id;
      if (id >= this.mapped.length || this.mapped[id] !== 1) continue; // a double return: the oracle's business
      const at = this.unreachStep[id]!;
      if (at === NONE) {
        this.delaySteps.push(0);
        this.delayMs.push(0);
      } else {
        const d = step - at;
        this.delaySteps.push(d);
        this.delayMs.push(now - this.unreachTime[id]!);
        if (d > 0) this.late++;
      }
      this.mapped[id] = 0;
      this.unreachStep[id] = NONE;
      // Swap-remove from the dense list.
      const p = this.pos[id]!;
      const last = this.list[--this.count]!;
      this.list[p] = last;
      this.pos[last] = p;
      this.pos[id] = -1;
    }
  }

  /** After lab step `step` (time `now`): stamps every mapped page that no root reaches and that was not stamped yet. */
  scan(forEachRoot: (fn: (skb: SkBuff) => void) => void, step: number, now: number): void {
    if (this.count === 0) return;
    this.epoch = (this.epoch + 1) >>> 0;
    if (this.epoch === 0) {
      this.marks.fill(0);
      this.epoch = 1;
    }
    forEachRoot(this.markRoot);
    const epoch = this.epoch;
    for (let k = 0; k < this.count; k++) {
      const id = this.list[k]!;
      if (this.marks[id] !== epoch && this.unreachStep[id] === NONE) {
        this.unreachStep[id] = step;
        this.unreachTime[id] = now;
      }
    }
  }

  /** Grants mapped and not handed back. */
  get outstanding(): number {
    return this.count;
  }

  /** Mapped grants a scan found unreachable that are still not back. */
  get unreachableOutstanding(): number {
    let n = 0;
    for (let k = 0; k < this.count; k++) if (this.unreachStep[this.list[k]!] !== NONE) n++;
    return n;
  }

  /** The figures so far. */
  summary(): PromptnessSummary {
    const s = this.delaySteps.sorted();
    const m = this.delayMs.sorted();
    let sum = 0;
    for (let i = 0; i < s.length; i++) sum += s[i]!;
    return {
      returned: s.length,
      heldLate: this.late,
      steps: { p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s.length === 0 ? 0 : s[s.length - 1]! },
      ms: { p50: quantile(m, 0.5), p99: quantile(m, 0.99), max: m.length === 0 ? 0 : m[m.length - 1]! },
      meanSteps: s.length === 0 ? 0 : sum / s.length,
    };
  }

  private markShinfo(sh: SkbSharedInfo, depth: number): void {
    const n = sh.nrFrags;
    const frags = sh.frags;
    if (!(n >= 0 && n <= frags.length)) throw new Error(`promptness: nrFrags is corrupt: expected 0 <= x <= ${frags.length} but got ${n}`);
    const epoch = this.epoch;
    for (let i = 0; i < n; i++) {
      const id = frags[i]!.page.id;
      if (id < 0) continue;
      if (id >= this.marks.length) this.grow(id);
      this.marks[id] = epoch;
    }
    let chain = 0;
    for (let f = sh.fragList; f !== null; f = f.next) {
      if (depth >= MAX_FRAG_LIST_DEPTH) throw new Error(`promptness: frag_list nesting deeper than ${MAX_FRAG_LIST_DEPTH}`);
      if (++chain > MAX_FRAG_LIST_CHAIN) throw new Error(`promptness: frag_list chain longer than ${MAX_FRAG_LIST_CHAIN} (a cycle?)`);
      this.markShinfo(f.shinfo, depth + 1);
    }
  }

  private grow(id: number): void {
    if (!Number.isInteger(id) || id < 0) throw new Error(`promptness: page id is corrupt: expected a non-negative integer but got ${id}`);
    if (id < this.mapped.length) return;
    let size = this.mapped.length;
    while (size <= id) size *= 2;
    const mapped = new Uint8Array(size);
    mapped.set(this.mapped);
    this.mapped = mapped;
    const us = new Float64Array(size).fill(NONE);
    us.set(this.unreachStep);
    this.unreachStep = us;
    const ut = new Float64Array(size);
    ut.set(this.unreachTime);
    this.unreachTime = ut;
    const marks = new Uint32Array(size);
    marks.set(this.marks);
    this.marks = marks;
    const list = new Int32Array(size);
    list.set(this.list);
    this.list = list;
    const pos = new Int32Array(size).fill(-1);
    pos.set(this.pos);
    this.pos = pos;
  }
}

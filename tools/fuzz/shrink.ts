// Delta debugging (Zeller's ddmin, complement side) over an op list: drop chunks, then single ops, then zero
// parameters, keeping each change only while the failure persists. Ops are interpreted modulo the state, so
// every candidate is a valid sequence.
import type { OpRecord } from './ops.js';

/** The result of shrinking: the smallest failing list found and how many candidates were executed. */
export interface ShrinkResult {
  readonly ops: OpRecord[];
  readonly tries: number;
}

/** Shrinks `ops` while `fails(candidate)` stays true; stops after `maxTries` executions. */
export function shrinkOps(ops: readonly OpRecord[], fails: (ops: readonly OpRecord[]) => boolean, maxTries = 3000): ShrinkResult {
  let cur = ops.slice();
  let tries = 0;
  const attempt = (cand: OpRecord[]): boolean => {
    if (tries >= maxTries) return false;
    tries++;
    if (!fails(cand)) return false;
    cur = cand;
    return true;
  };

  // Chunks: n parts, remove one part at a time; refine when nothing can go.
  let n = 2;
  while (cur.length >= 2 && tries < maxTries) {
    const chunk = Math.ceil(cur.length / n);
    let reduced = false;
    for (let start = 0; start < cur.length; start += chunk) {
      if (attempt([...cur.slice(0, start), ...cur.slice(start + chunk)])) {
        n = Math.max(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (n >= cur.length) break;
      n = Math.min(cur.length, n * 2);
    }
  }

  // Single ops, until a fixpoint (removing one op can make another removable).
  for (let changed = true; changed && tries < maxTries; ) {
    changed = false;
    for (let i = cur.length - 1; i >= 0; i--) {
      if (cur.length > 1 && attempt([...cur.slice(0, i), ...cur.slice(i + 1)])) changed = true;
    }
  }

  // Parameters: zero is the simplest value (handle 0, minimal lengths).
  for (let i = 0; i < cur.length; i++) {
    for (const key of ['a', 'b', 'c'] as const) {
      const op = cur[i]!;
      if (op[key] === 0) continue;
      const cand = cur.slice();
      cand[i] = { ...op, [key]: 0 };
      attempt(cand);
    }
  }
  return { ops: cur, tries };
}

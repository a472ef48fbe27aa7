// The fuzzer's operation records: plain data, so that fast-check, the seeded generator and the shrinker all
// produce and edit the same thing. Every parameter is a u32 interpreted modulo the state when the op runs
// (handle index modulo the live count, lengths modulo the skb's length), so any subsequence stays valid.
import type { Random } from '../../shared/random.js';

/** Every operation the executor knows, named after the kernel function it exercises. */
export const OP_KINDS = [
  'build', // netback: alloc_skb + 128-byte header copy + foreign frags (+ frag_list overflow), design.attach
  'clone', // skb_clone (fclone companion when available)
  'get', // skb_get: a second reference to the same skb
  'copy', // skb_copy
  'pskb_copy', // __pskb_copy
  'expand_head', // pskb_expand_head
  'pull_tail', // __pskb_pull_tail
  'may_pull', // pskb_may_pull
  'pull', // pskb_pull (eth_type_trans style: the data pointer moves past pulled bytes)
  'header_release', // skb_header_release (TCP: the skb keeps a payload-only reference)
  'linearize', // skb_linearize
  'split', // skb_split (tcp_fragment)
  'segment', // skb_segment (software GSO), sg on or off
  'trim', // pskb_trim
  'trim_head', // tcp_trim_head
  'coalesce', // skb_try_coalesce (tcp_try_coalesce) + kfree_skb_partial
  'shift', // skb_shift (tcp_shift_skb_data)
  'orphan', // skb_orphan_frags
  'chain', // append an skb to another's frag_list (skb_gro_receive / ip_frag_reasm style)
  'free', // kfree_skb or consume_skb
] as const;

/** One operation kind. */
export type OpKind = (typeof OP_KINDS)[number];

/** One operation: a kind and three u32 parameters whose meaning depends on the kind and the state. */
export interface OpRecord {
  readonly op: OpKind;
  readonly a: number;
  readonly b: number;
  readonly c: number;
}

// Relative weights for the seeded generator: builds and frees keep a handful of skbs alive.
const WEIGHTS: Readonly<Record<OpKind, number>> = {
  build: 12,
  clone: 8,
  get: 3,
  copy: 2,
  pskb_copy: 6,
  expand_head: 8,
  pull_tail: 6,
  may_pull: 4,
  pull: 4,
  header_release: 2,
  linearize: 3,
  split: 6,
  segment: 5,
  trim: 6,
  trim_head: 6,
  coalesce: 6,
  shift: 6,
  orphan: 3,
  chain: 3,
  free: 10,
};

const CUMULATIVE: readonly number[] = (() => {
  let sum = 0;
  return OP_KINDS.map((k) => (sum += WEIGHTS[k]));
})();
const TOTAL_WEIGHT = CUMULATIVE[CUMULATIVE.length - 1]!;

/** The shortest and longest op sequence of a seeded run. */
export const MIN_OPS = 8;
export const MAX_OPS = 48;

/** One random op drawn with the generator's weights. */
export function randomOp(rng: Random): OpRecord {
  const w = rng.int(0, TOTAL_WEIGHT - 1);
  let i = 0;
  while (CUMULATIVE[i]! <= w) i++;
  return { op: OP_KINDS[i]!, a: rng.u32(), b: rng.u32(), c: rng.u32() };
}

/** The op sequence of one seeded run: starts with two builds so the other ops have something to work on. */
export function generateOps(rng: Random): OpRecord[] {
  const n = rng.int(MIN_OPS, MAX_OPS);
  const ops: OpRecord[] = [];
  for (let i = 0; i < n; i++) {
    ops.push(i < 2 ? { op: 'build', a: rng.u32(), b: rng.u32(), c: rng.u32() } : randomOp(rng));
  }
  return ops;
}

/** One op as one line: `split a=1 b=2 c=3`. */
export function formatOp(op: OpRecord): string {
  return `${op.op} a=${op.a} b=${op.b} c=${op.c}`;
}

/** Whether a value is an op record (for replaying a sequence given as JSON). */
export function isOpRecord(v: unknown): v is OpRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return (
    typeof r['op'] === 'string' &&
    (OP_KINDS as readonly string[]).includes(r['op']) &&
    isU32(r['a']) &&
    isU32(r['b']) &&
    isU32(r['c'])
  );
}

function isU32(v: unknown): boolean {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

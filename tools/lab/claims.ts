// The 2006-2008 debate's claims (../shared/seeds), each a row with the figure measured in this lab run and a verdict
// computed from it by a rule stated in the row. Nothing here is hard-coded but the claims' own numbers (the ones
// the debate stated, to compare with) and the thresholds of the rules. A claim whose inputs are not in this run
// (a design or workload left out with --designs/--workloads) says so instead of a verdict.
import { PAGE_SIZE } from '../../backend/page.js';
import { POINTER_BYTES } from '../../backend/release-util.js';
import type { LabDesign } from './designs.js';
import { probeOps, type OpProbe } from './ops.js';
import type { LabResult } from './results.js';
import { mapLookupNs, pageCopyNs, tokenAllocExtraNs } from './timing.js';

/** One claim's row. */
export interface Claim {
  readonly id: string;
  /** The claim, as the debate made it. */
  readonly claim: string;
  /** Who said it, where. */
  readonly source: string;
  /** The figures measured here, in words. */
  readonly measured: string;
  /** holds / does not hold / holds only when ... / not measured: ... */
  readonly verdict: string;
  /** How the verdict follows from the figures. */
  readonly rule: string;
  /** Whether the figures are wall-clock timings (not reproducible by seed). */
  readonly timed: boolean;
  readonly figures: Readonly<Record<string, number | null>>;
}

/** What the claims are computed from. */
export interface ClaimInputs {
  readonly results: readonly LabResult[];
  readonly designs: readonly LabDesign[];
  readonly seed: number;
  /** Timed loops may be skipped (tests): the timed claims then say "not measured". */
  readonly timing: boolean;
  /** Draws per operation for the per-operation probe. */
  readonly probeDraws: number;
}

export const HOLDS = 'holds';
export const DOES_NOT_HOLD = 'does not hold';

/** A claim that could not be measured in this run, and why. */
function notMeasured(base: Omit<Claim, 'measured' | 'verdict' | 'figures'>, why: string): Claim {
  return { ...base, measured: '-', verdict: `not measured: ${why}`, figures: {} };
}

const fmt = (x: number, digits = 2): string => (Number.isInteger(x) ? String(x) : x.toFixed(digits));
const pct = (x: number, digits = 1): string => `${(x * 100).toFixed(digits)}%`;

function row(results: readonly LabResult[], design: string, workload: string): LabResult | undefined {
  return results.find((r) => r.design === design && r.workload === workload);
}

/** The design the claim about TCP references is measured with: the baseline if it ran, else the first safe design. */
function referenceRow(results: readonly LabResult[], workload: string): LabResult | undefined {
  return row(results, 'rusty', workload) ?? results.find((r) => r.workload === workload && r.safe);
}

// ---- the claims ----------------------------------------------------------------------------------------------

const TCP_REFS = {
  id: 'tcp-refs',
  claim: 'a page is referenced by TCP about 20 times or more during transmit',
  source: 'Bolkhovitin, net_priv patch (seed 002)',
  rule: 'holds if get_page calls per mapped grant (netback\'s own included) reach 20 in tcp-loss; else does not hold',
  timed: false,
} as const;

function tcpRefs(results: readonly LabResult[]): Claim {
  const tcp = referenceRow(results, 'tcp-loss');
  if (tcp === undefined) return notMeasured(TCP_REFS, 'workload tcp-loss is not in this run');
  const refs = tcp.pageGetsPerGrant;
  const puts = tcp.grants > 0 ? (tcp.counters['pagePuts'] ?? 0) / tcp.grants : 0;
  const e = tcp.events;
  let measured =
    `${fmt(refs)} get_page and ${fmt(puts)} put_page per mapped grant (${tcp.design}, tcp-loss, ${tcp.grants} grants; ` +
    `${e['tcpRetransmits'] ?? 0} retransmits, ${e['tcpPartialAcks'] ?? 0} partial ACKs, ${e['tcpFragments'] ?? 0} tcp_fragment splits)`;
  // net_priv counts exactly the references the network stack takes on its owners' pages (its get/put callbacks).
  const np = row(results, 'net_priv', 'tcp-loss');
  const npRefs = np === undefined || np.grants === 0 ? null : (np.counters['netPageCallbacks'] ?? 0) / 2 / np.grants;
  if (npRefs !== null) measured += `; net_priv's get/put callbacks: ${fmt(npRefs)} references per grant`;
  return { ...TCP_REFS, measured, verdict: refs >= 20 ? HOLDS : DOES_NOT_HOLD, figures: { getsPerGrant: refs, putsPerGrant: puts, netPrivRefsPerGrant: npRefs } };
}

const HASH_VS_COPY = {
  id: 'hash-vs-copy',
  claim: 'a hash lookup on each get/put costs 20 × 20 × 2 = 800 ticks against 1500 ticks to copy a page, so a page-to-owner hash is not worth it',
  source: 'Bolkhovitin, net_priv patch, rejected alternative 2 (seed 002)',
  rule:
    'timed here: a Map lookup by page id and a 4096-byte copy; holds if the lookups per page measured in tcp-loss (net_priv-hash\'s ' +
    'own count, else 2 per get_page) cost at least half a page copy (as 800 is of 1500); else holds only when a page is looked up ' +
    'at least L times, L = copy / (2 × lookup)',
  timed: true,
} as const;

function hashVsCopy(results: readonly LabResult[], timing: boolean): Claim {
  if (!timing) return notMeasured(HASH_VS_COPY, 'timed loops were skipped');
  const lookup = mapLookupNs();
  const copy = pageCopyNs();
  // Lookups per page: net_priv-hash's own count in tcp-loss, else two per get_page there.
  const hashed = row(results, 'net_priv-hash', 'tcp-loss');
  const tcp = referenceRow(results, 'tcp-loss');
  let lookups: number | null = null;
  let from = '';
  if (hashed !== undefined && hashed.grants > 0) {
    lookups = (hashed.counters['hashLookups'] ?? 0) / hashed.grants;
    from = "net_priv-hash's lookups";
  } else if (tcp !== undefined) {
    lookups = 2 * tcp.pageGetsPerGrant;
    from = `2 per get_page (${tcp.design})`;
  }
  const at20 = 2 * 20 * lookup;
  const threshold = copy / (2 * lookup);
  const figures: Record<string, number | null> = { lookupNs: lookup, copyNs: copy, lookupsPerPage: lookups, hashNsAt20Refs: at20, breakEvenLookups: threshold };
  let measured = `Map lookup ${fmt(lookup, 1)} ns, page copy ${fmt(copy, 1)} ns; at the claimed 20 refs (40 lookups): ${fmt(at20, 0)} ns = ${fmt(at20 / copy, 1)}× a copy`;
  let verdict: string;
  if (lookups === null) {
    verdict = `holds only when a page is looked up at least ${fmt(Math.ceil(threshold), 0)} times (lookups per page not measured: no tcp-loss run)`;
  } else {
    const atMeasured = lookups * lookup;
    figures['hashNsAtMeasured'] = atMeasured;
    measured += `; at the ${fmt(lookups)} lookups per page measured in tcp-loss (${from}): ${fmt(atMeasured, 0)} ns = ${pct(atMeasured / copy, 0)} of a copy`;
    verdict = atMeasured >= copy / 2 ? HOLDS : `holds only when a page is looked up at least ${fmt(Math.ceil(threshold), 0)} times (measured: ${fmt(lookups)})`;
  }
  measured += `; one lookup at the last put only: ${pct(lookup / copy, 0)} of a copy`;
  const ratios: number[] = [];
  for (const h of results.filter((r) => r.design === 'net_priv-hash')) {
    const plain = row(results, 'net_priv', h.workload);
    if (plain !== undefined && plain.pps > 0 && h.pps > 0) ratios.push(h.pps / plain.pps);
  }
  if (ratios.length > 0) {
    const g = geomean(ratios);
    figures['hashThroughputVsNetPriv'] = g;
    measured += `; net_priv-hash runs at ${pct(g, 0)} of net_priv's packet rate (geometric mean over ${ratios.length} workloads)`;
  }
  return { ...HASH_VS_COPY, measured, verdict, figures };
}

const BARE_DESTRUCTOR = {
  id: 'bare-destructor',
  claim: 'pskb_expand_head and __pskb_pull_tail defeat a bare shinfo destructor (the shinfo\'s lifetime is not the pages\')',
  source: 'Herbert Xu (seed 002), answered by Rusty\'s orig references (seed 001)',
  rule:
    'per-operation probes (two netback skbs, a clone, the operation on the clone or the original, the originals freed first): holds if ' +
    'both expand_head and pull_tail make naive return grants early while rusty (if run) never does',
  timed: false,
} as const;

function bareDestructor(designs: readonly LabDesign[], seed: number, draws: number): Claim {
  const naive = designs.find((d) => d.name === 'naive');
  if (naive === undefined) return notMeasured(BARE_DESTRUCTOR, 'design naive is not in this run');
  const rusty = designs.find((d) => d.name === 'rusty');
  const pn = probeOps(naive.design, seed, draws);
  const pr = rusty === undefined ? null : probeOps(rusty.design, seed, draws);
  const breaking = Object.entries(pn).filter(([, p]) => p.failing > 0);
  const figures: Record<string, number | null> = {};
  for (const [op, p] of Object.entries(pn)) figures[`naive.${op}`] = p.failing;
  let rustyEarly: number | null = null;
  if (pr !== null) {
    rustyEarly = sumEarly(pr);
    figures['rusty.earlyReturns'] = rustyEarly;
  }
  const xh = pn['expand_head']!;
  const pt = pn['pull_tail']!;
  const holds = xh.failing > 0 && pt.failing > 0 && (rustyEarly === null || rustyEarly === 0);
  const others = breaking
    .filter(([op]) => op !== 'expand_head' && op !== 'pull_tail')
    .map(([op, p]) => `${op} ${p.failing}/${p.runs}`)
    .join(', ');
  const measured =
    `naive returns early in expand_head ${xh.failing}/${xh.runs} and pull_tail ${pt.failing}/${pt.runs} probes` +
    (others === '' ? '' : `; also ${others}`) +
    (rustyEarly === null ? '' : `; rusty: ${rustyEarly} early returns in all probes`);
  return { ...BARE_DESTRUCTOR, measured, verdict: holds ? HOLDS : DOES_NOT_HOLD, figures };
}

function sumEarly(p: Record<string, OpProbe>): number {
  let n = 0;
  for (const v of Object.values(p)) n += v.earlyReturns;
  return n;
}

const TOKEN_ALLOC = {
  id: 'token-alloc',
  claim: 'allocating a token per send is a noticeable overhead at millions of packets per second',
  source: 'Polyakov on Kuznetsov\'s transaction token (seed 002)',
  rule:
    'timed here: a small allocation per send against reusing a token embedded in the sender\'s command, with as many in flight; holds ' +
    'if the extra cost is at least 5% of the 1000 ns a packet may take at 1 Mpps; the runs\' allocations per packet of token and ' +
    'token-alloc are given for reference',
  timed: true,
} as const;

function tokenAlloc(results: readonly LabResult[], timing: boolean): Claim {
  const alloc = results.filter((r) => r.design === 'token-alloc');
  const pairs = alloc.map((a) => [a, row(results, 'token', a.workload)] as const).filter((p): p is readonly [LabResult, LabResult] => p[1] !== undefined);
  if (pairs.length === 0) return notMeasured(TOKEN_ALLOC, 'designs token and token-alloc are not both in this run');
  if (!timing) return notMeasured(TOKEN_ALLOC, 'timed loops were skipped');
  const t = tokenAllocExtraNs();
  let extraAllocs = 0;
  const speed: number[] = [];
  for (const [a, e] of pairs) {
    extraAllocs += a.allocsPerPacket - e.allocsPerPacket;
    if (a.pps > 0 && e.pps > 0) speed.push(a.pps / e.pps);
  }
  extraAllocs /= pairs.length;
  const share = t.extraNs / 1000;
  const figures: Record<string, number | null> = {
    allocNs: t.allocNs,
    embeddedNs: t.embeddedNs,
    extraNsPerSend: t.extraNs,
    shareOf1MppsBudget: share,
    extraAllocsPerPacket: extraAllocs,
    throughputVsEmbedded: speed.length > 0 ? geomean(speed) : null,
  };
  const measured =
    `a token allocation costs ${fmt(t.extraNs, 1)} ns more per send than an embedded token (${fmt(t.allocNs, 1)} vs ${fmt(t.embeddedNs, 1)} ns) = ` +
    `${pct(share, 2)} of a 1 Mpps budget; the runs: token-alloc makes ${fmt(extraAllocs)} more allocations per packet than token` +
    (speed.length > 0 ? ` and runs at ${pct(geomean(speed), 0)} of its packet rate` : '');
  return { ...TOKEN_ALLOC, measured, verdict: share >= 0.05 ? HOLDS : DOES_NOT_HOLD, figures };
}

/** A real struct page on x86-64 Linux: 64 bytes (include/linux/mm_types.h). */
export const STRUCT_PAGE_BYTES = 64;

const STRUCT_PAGE = {
  id: 'struct-page',
  claim: '+8 bytes in struct page is only 0.2% of RAM',
  source: 'Bolkhovitin answering Polyakov (seed 002)',
  rule:
    'holds if the net_priv pointer every struct page carries (one pointer, x86-64) is 0.2% of a 4096-byte page (within 0.05 points); ' +
    'the designs\' declared bookkeeping per tracked page is listed for comparison (it costs only while a grant is in flight)',
  timed: false,
} as const;

function structPage(designs: readonly LabDesign[]): Claim {
  const np = designs.find((d) => d.name === 'net_priv');
  if (np === undefined) return notMeasured(STRUCT_PAGE, 'design net_priv is not in this run');
  if (np.bookkeeping === null) return notMeasured(STRUCT_PAGE, 'net_priv declares no bookkeeping figure');
  // net_priv is a `void *` in struct page (seed 002's mm_types.h hunk): it grows every page of RAM, in use or not.
  const field = POINTER_BYTES;
  const share = field / PAGE_SIZE;
  const perPage = designs
    .filter((d) => d.bookkeeping !== null)
    .map((d) => `${d.name} ${d.bookkeeping!.perPage} B`)
    .join(', ');
  const measured =
    `the net_priv pointer adds ${field} bytes to every struct page = ${pct(share, 3)} of RAM (${pct(field / STRUCT_PAGE_BYTES, 1)} growth of a ` +
    `${STRUCT_PAGE_BYTES}-byte struct page); declared bookkeeping per tracked page: ${perPage}`;
  return {
    ...STRUCT_PAGE,
    measured,
    verdict: Math.abs(share - 0.002) <= 0.0005 ? HOLDS : DOES_NOT_HOLD,
    figures: { structPageBytes: field, shareOfRam: share, netPrivBytesPerTrackedPage: np.bookkeeping.perPage },
  };
}

const MAINLINE_COPIES = {
  id: 'mainline-copies',
  claim: 'mainline (ubuf_info) copies on every tap and every flood',
  source: 'kernel-xen.md §1: skb_orphan_frags on skb_clone for taps and bridge floods',
  rule: 'holds if at least 95% of ubuf\'s zerocopy completions complete as copied in both the tap and the flood workloads; holds only with a tap / only for floods if one of them',
  timed: false,
} as const;

function mainlineCopies(results: readonly LabResult[]): Claim {
  const tap = row(results, 'ubuf', 'tap');
  const flood = row(results, 'ubuf', 'flood');
  if (tap === undefined && flood === undefined) return notMeasured(MAINLINE_COPIES, 'design ubuf with workload tap or flood is not in this run');
  const part = (r: LabResult | undefined, name: string): string =>
    r === undefined ? `${name}: not run` : `${name}: ${pct(r.copiedCompletionShare, 0)} of ${r.completions} completions copied, ${fmt(r.copiedBytesPerByte, 3)} bytes copied per byte sent`;
  const ok = (r: LabResult | undefined): boolean => r !== undefined && r.completions > 0 && r.copiedCompletionShare >= 0.95;
  let verdict: string;
  if (ok(tap) && ok(flood)) verdict = HOLDS;
  else if (ok(tap)) verdict = flood === undefined ? 'holds for taps (floods not run)' : 'holds only with a tap';
  else if (ok(flood)) verdict = tap === undefined ? 'holds for floods (taps not run)' : 'holds only for floods';
  else verdict = DOES_NOT_HOLD;
  const rustyTap = row(results, 'rusty', 'tap');
  const measured = `${part(tap, 'tap')}; ${part(flood, 'flood')}` + (rustyTap === undefined ? '' : `; rusty copies ${fmt(rustyTap.copiedBytesPerByte, 3)} per byte with the tap`);
  return {
    ...MAINLINE_COPIES,
    measured,
    verdict,
    figures: {
      tapCopiedShare: tap?.copiedCompletionShare ?? null,
      floodCopiedShare: flood?.copiedCompletionShare ?? null,
      tapCopiedBytesPerByte: tap?.copiedBytesPerByte ?? null,
      floodCopiedBytesPerByte: flood?.copiedBytesPerByte ?? null,
    },
  };
}

const LATE_CHAIN = {
  id: 'bare-chain-late',
  claim: 'Rusty\'s bare chain returns a large share of grants late in mixed workloads (pages pulled, trimmed or split off wait for the last descendant)',
  source: 'an independent model (issue 6, design 9)',
  rule: 'holds if rusty returns at least 10% of the grants of some system workload one step or more after they became unreachable',
  timed: false,
} as const;

const REFINED_CHAIN = {
  id: 'rusty-page',
  claim: 'returning each page as soon as no live shinfo holds it (rusty-page) removes that lateness without losing safety',
  source: 'this project, going beyond the seeds (issue 6, design 9)',
  rule: 'holds if rusty-page is safe in every workload run and returns at most 1% of any system workload\'s grants late',
  timed: false,
} as const;

function worstLate(results: readonly LabResult[], design: string): { share: number; workload: string } | null {
  let best: { share: number; workload: string } | null = null;
  for (const r of results) {
    if (r.design !== design || r.heldLateShare === null) continue;
    if (best === null || r.heldLateShare > best.share) best = { share: r.heldLateShare, workload: r.workload };
  }
  return best;
}

function lateChain(results: readonly LabResult[]): Claim {
  const w = worstLate(results, 'rusty');
  if (w === null) return notMeasured(LATE_CHAIN, 'design rusty with a system workload is not in this run');
  const per = results
    .filter((r) => r.design === 'rusty' && r.heldLateShare !== null)
    .map((r) => `${r.workload} ${pct(r.heldLateShare!, 0)} (p99 ${r.lateP99} steps, ${fmt(r.lateP99Ms ?? 0, 1)} ms)`)
    .join(', ');
  return { ...LATE_CHAIN, measured: `rusty holds late: ${per}`, verdict: w.share >= 0.1 ? HOLDS : DOES_NOT_HOLD, figures: { worstShare: w.share } };
}

function refinedChain(results: readonly LabResult[]): Claim {
  const rows = results.filter((r) => r.design === 'rusty-page');
  const w = worstLate(results, 'rusty-page');
  if (rows.length === 0 || w === null) return notMeasured(REFINED_CHAIN, 'design rusty-page with a system workload is not in this run');
  const unsafe = rows.filter((r) => !r.safe);
  const rusty = worstLate(results, 'rusty');
  const measured =
    `rusty-page holds at most ${pct(w.share, 1)} late (${w.workload})` +
    (rusty === null ? '' : ` against rusty's ${pct(rusty.share, 1)} (${rusty.workload})`) +
    `; unsafe in ${unsafe.length} of ${rows.length} workloads` +
    (unsafe.length === 0 ? '' : ` (${unsafe.map((r) => r.workload).join(', ')})`);
  return {
    ...REFINED_CHAIN,
    measured,
    verdict: unsafe.length === 0 && w.share <= 0.01 ? HOLDS : DOES_NOT_HOLD,
    figures: { worstShare: w.share, unsafeWorkloads: unsafe.length, rustyWorstShare: rusty?.share ?? null },
  };
}

function geomean(xs: readonly number[]): number {
  let s = 0;
  for (const x of xs) s += Math.log(x);
  return Math.exp(s / xs.length);
}

/** Every claim, measured on `inputs`. */
export function measureClaims(inputs: ClaimInputs): Claim[] {
  const { results, designs } = inputs;
  return [
    tcpRefs(results),
    hashVsCopy(results, inputs.timing),
    bareDestructor(designs, inputs.seed, inputs.probeDraws),
    tokenAlloc(results, inputs.timing),
    structPage(designs),
    mainlineCopies(results),
    lateChain(results),
    refinedChain(results),
  ];
}

/** Whether a claim row carries a measured figure and a verdict. */
export function isMeasured(c: Claim): boolean {
  return !c.verdict.startsWith('not measured');
}

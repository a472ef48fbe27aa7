// The release designs the lab runs: every design backend/release.ts knows, in a fixed order, with what the lab
// needs to know about each (is it expected to be sound, its declared bookkeeping). The designs module owns those
// facts; the table below only fills in for names whose metadata has not landed there yet.
import { designByName, type ReleaseDesign } from '../../backend/release.js';

/** The designs in table order: the baseline first, then the seeds' designs in the order the issue lists them. */
export const DESIGN_ORDER: readonly string[] = [
  'rusty',
  'rusty-page',
  'naive',
  'zccd',
  'net_priv',
  'net_priv-hash',
  'page-destructor',
  'token',
  'token-alloc',
  'ubuf',
  'copy',
];

/** The design whose speed the others are compared with. */
export const BASELINE_DESIGN = 'rusty';

/** Bytes of bookkeeping a design adds. */
export interface Bookkeeping {
  readonly perPage: number;
  readonly perSkb: number;
}

/** A design as the lab sees it. */
export interface LabDesign {
  readonly name: string;
  readonly design: ReleaseDesign;
  /** Whether the design is meant to be sound (a violation then fails the lab). */
  readonly expectedSound: boolean;
  readonly bookkeeping: Bookkeeping | null;
  /** Where the design comes from (seed, mail, kernel source). */
  readonly source: string | null;
}

// Designs the issue calls unsound on purpose (the negative control, and zccd as the seed's patch wrote it).
const EXPECTED_UNSOUND: ReadonlySet<string> = new Set(['naive', 'zccd']);

/** Reads a design's own metadata if it carries any (expectedSound, bookkeeping, source), else the fallbacks. */
function describe(name: string, design: ReleaseDesign): LabDesign {
  const meta = design as unknown as Record<string, unknown>;
  const sound = meta['expectedSound'] ?? meta['sound'];
  const bk = meta['bookkeeping'];
  const src = meta['source'] ?? meta['citation'];
  return {
    name,
    design,
    expectedSound: typeof sound === 'boolean' ? sound : !EXPECTED_UNSOUND.has(name),
    bookkeeping: isBookkeeping(bk) ? { perPage: bk.perPage, perSkb: bk.perSkb } : null,
    source: typeof src === 'string' ? src : null,
  };
}

function isBookkeeping(v: unknown): v is Bookkeeping {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return typeof r['perPage'] === 'number' && typeof r['perSkb'] === 'number';
}

/** Every design release.ts knows, in DESIGN_ORDER. */
export function labDesigns(): LabDesign[] {
  const out: LabDesign[] = [];
  for (const name of DESIGN_ORDER) {
    const d = designByName(name);
    if (d !== undefined) out.push(describe(name, d));
  }
  return out;
}

/** The design called `name`, or undefined. */
export function labDesign(name: string): LabDesign | undefined {
  return labDesigns().find((d) => d.name === name);
}

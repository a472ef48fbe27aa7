// The release designs the lab runs: every design in backend/release.ts's DESIGNS, baseline first, with what the
// lab needs to know about each (is it meant to be sound, its declared bookkeeping, its source). The designs module
// owns those facts; the lab only orders them.
import { DESIGNS, type ReleaseDesign } from '../../backend/release.js';

/** The design whose speed the others are compared with, and which the table lists first. */
export const BASELINE_DESIGN = 'rusty';

/** Bytes of bookkeeping a design adds. */
export interface Bookkeeping {
  readonly perPage: number;
  readonly perSkb: number;
  /** Per netback packet (its completion object), beyond the per-page bytes. */
  readonly perPacket?: number;
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

/** Every design of DESIGNS, the baseline first, the others in DESIGNS' order. */
export function labDesigns(): LabDesign[] {
  const all = DESIGNS.map(
    (d): LabDesign => ({
      name: d.name,
      design: d,
      expectedSound: d.sound,
      bookkeeping: { perPage: d.bookkeeping.perPage, perSkb: d.bookkeeping.perSkb, perPacket: d.bookkeeping.perPacket },
      source: d.source,
    }),
  );
  return [...all.filter((d) => d.name === BASELINE_DESIGN), ...all.filter((d) => d.name !== BASELINE_DESIGN)];
}

/** The design called `name`, or undefined. */
export function labDesign(name: string): LabDesign | undefined {
  return labDesigns().find((d) => d.name === name);
}

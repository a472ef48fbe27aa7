// fast-check arbitraries for op records, so ava property tests drive the same executor as `npm run fuzz`
// and get fast-check's shrinking and printed seeds.
import fc from 'fast-check';
import { OP_KINDS, type OpRecord } from './ops.js';

const u32 = fc.integer({ min: 0, max: 0xffffffff });

/** One op record: any kind, any u32 parameters. */
export const opRecordArb: fc.Arbitrary<OpRecord> = fc.record({ op: fc.constantFrom(...OP_KINDS), a: u32, b: u32, c: u32 });

/** An op list that starts with a netback build, so most lists exercise something. */
export const opListArb = (maxLength = 40): fc.Arbitrary<OpRecord[]> =>
  fc
    .tuple(fc.record({ op: fc.constant('build' as const), a: u32, b: u32, c: u32 }), fc.array(opRecordArb, { maxLength }))
    .map(([first, rest]) => [first, ...rest]);

// The README's "write your own design" example, kept compiling and working: a design written against the public
// release interface alone (backend/release.ts ReleaseDesign), measured by the lab's op-sequence workload and
// per-operation probes exactly as the registered designs are. (To run it on the whole-system workloads too, add
// it to DESIGNS in backend/release.ts: `npm run lab -- --designs rusty,last-put`.)
import test from 'ava';
import type { Page } from '../../backend/page.js';
import type { GrantSink, ReleaseDesign } from '../../backend/release.js';
import type { SkbContext } from '../../backend/skbuff.js';
import { probeOps, runOps } from '../../tools/lab/ops.js';

// ---- the example, as the README shows it ----
const owners = new WeakMap<Page, GrantSink>();

/** Hands a grant back when its page's count falls back to the mapping's own reference (Xen's page destructor). */
export const lastPut: ReleaseDesign = {
  name: 'last-put',
  attach(_skb, pages, sink) {
    for (const page of pages) owners.set(page, sink);
  },
  refDataParent() {}, // page references carry everything: nothing hangs on shinfos
  mayMoveFrags: () => true,
  pagePut(_ctx: SkbContext, page: Page) {
    const sink = owners.get(page);
    if (sink !== undefined && page.count === 1) {
      owners.delete(page);
      sink.release(page);
    }
  },
};
// ---- end of the example ----

test('the README example design is sound under the lab\'s op sequences and per-operation probes, and prompt', (t) => {
  const m = runOps({ name: lastPut.name, design: lastPut, expectedSound: true, bookkeeping: null, source: null }, 300, 1);
  t.deepEqual({ early: m.earlyReturns, double: m.doubleReturns, leaks: m.leaks, other: m.otherFailures }, { early: 0, double: 0, leaks: 0, other: 0 }, m.firstViolation ?? '');
  t.true(m.packets > 0);
  t.is(m.lateMeanSteps, 0, 'a page goes back at its last put, never later');
  for (const [op, p] of Object.entries(probeOps(lastPut, 1, 6))) t.is(p.earlyReturns, 0, op);
});

test('the example\'s mistake is caught: returning at the last put of the frag, not of the page', (t) => {
  const wrong: ReleaseDesign = {
    ...lastPut,
    name: 'last-put-wrong',
    pagePut(_ctx: SkbContext, page: Page) {
      const sink = owners.get(page);
      // Off by one: the mapping's own reference is forgotten, so the first put of two frags returns the grant.
      if (sink !== undefined && page.count <= 2) {
        owners.delete(page);
        sink.release(page);
      }
    },
  };
  const m = runOps({ name: wrong.name, design: wrong, expectedSound: true, bookkeeping: null, source: null }, 300, 1);
  t.true(m.earlyReturns > 0);
  t.regex(m.firstViolation ?? '', /breaking op: /);
});

// netback's in-flight packet count (xenvif's inflight_packets, which teardown waits on) under release designs that
// give a packet's pages back one at a time, while netback reuses the freed pending slots for new packets. The
// independent model is the guest's view: a packet is in flight until every one of its grants was posted back.
// Found by `npm run stress -- --design page-destructor`: per-page releases decremented the counter of whichever
// packet had reused the first page's slot, so inflight_packets never returned to 0 and teardown waited forever.
import test from 'ava';
import { fc, testProp } from '@fast-check/ava';
import { designByName } from '../../backend/release.js';
import { kfreeSkb, pskbMayPull, pskbTrim, skbHeadlen, type SkBuff } from '../../backend/skbuff.js';
import { Rig, type SentPacket } from './netback-rig.js';

// Designs that release page by page (per-page destructors or counts) and the default, per shinfo.
const DESIGNS = ['page-destructor', 'net_priv', 'net_priv-hash', 'rusty-page', 'rusty', 'ubuf'];

// Bounds that keep a run inside the guest's grant table (4096 refs, never ended here) and memory: at most
// MAX_OPS * CYCLE_MAX slots.
const MAX_OPS = 14;
const CYCLE_MAX = 270;
const GUEST_FRAMES = MAX_OPS * CYCLE_MAX + 64;

type Op =
  | { kind: 'send'; frags: number }
  | { kind: 'trim'; pick: number }
  | { kind: 'pull'; pick: number }
  | { kind: 'free'; pick: number }
  | { kind: 'cycle'; n: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('send' as const), frags: fc.integer({ min: 1, max: 4 }) }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('trim' as const), pick: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('pull' as const), pick: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }), weight: 2 },
  // One-slot packets sent and freed at once: netback cycles through its free pending slots, reusing freed ones.
  { arbitrary: fc.record({ kind: fc.constant('cycle' as const), n: fc.integer({ min: 1, max: CYCLE_MAX }) }), weight: 2 },
);

for (const name of DESIGNS) {
  testProp(
    `regression: inflight_packets follows the guest's view under ${name} (pages released one by one, slots reused)`,
    [fc.array(opArb, { minLength: 1, maxLength: MAX_OPS })],
    (t, ops) => {
      const design = designByName(name)!;
      const rig = new Rig({ design });
      const g = rig.guest(1, { frames: GUEST_FRAMES });
      const sent: SentPacket[] = [];
      const returned = new Set<number>();
      const inFlight = (): number => sent.filter((p) => p.grefs.some((r) => !returned.has(r))).length;
      const settle = (): void => {
        g.vif.flushDealloc();
        for (const r of g.notices.grefs()) returned.add(r);
        g.txResponses();
      };
      const pick = (n: number): SkBuff | undefined => (rig.held.length === 0 ? undefined : rig.held[n % rig.held.length]);
      for (const op of ops) {
        if (op.kind === 'send') {
          // Every slot past the header copy is mapped: first slot 600 B (128 copied, the rest a frag), frags 500 B.
          sent.push(g.send([{ size: 600 }, ...Array.from({ length: op.frags - 1 }, () => ({ size: 500 }))]));
          g.vif.txAction();
        } else if (op.kind === 'trim') {
          // Drops the last frag (its page goes back alone), keeping the rest of the packet in the stack.
          const skb = pick(op.pick);
          if (skb !== undefined && skb.shinfo.nrFrags > 1) {
            const last = skb.shinfo.frags[skb.shinfo.nrFrags - 1]!;
            t.is(pskbTrim(skb, skb.len - last.size), 0);
          }
        } else if (op.kind === 'cycle') {
          for (let i = 0; i < op.n; i++) {
            sent.push(g.send([{ size: 600 }]));
            g.vif.txAction();
            kfreeSkb(rig.held.pop()!);
            settle();
          }
        } else if (op.kind === 'pull') {
          // Pulls the first frag into the linear part (__pskb_pull_tail): the packet's first page goes back first.
          const skb = pick(op.pick);
          if (skb !== undefined && skb.shinfo.nrFrags > 1) t.true(pskbMayPull(skb, skbHeadlen(skb) + skb.shinfo.frags[0]!.size));
        } else {
          const skb = pick(op.pick);
          if (skb !== undefined) {
            rig.held.splice(rig.held.indexOf(skb), 1);
            kfreeSkb(skb);
          }
        }
        settle();
        t.is(g.vif.tx!.inflightPackets, inFlight(), `after ${JSON.stringify(op)}`);
      }
      rig.freeAll();
      settle();
      t.is(g.vif.tx!.inflightPackets, 0);
      t.is(inFlight(), 0, 'every grant was posted back');
      t.true(g.vif.isDrained());
    },
    { numRuns: 60 },
  );
}

// The shape the stress run met: a packet whose first page went back early (a partial ACK's tcp_trim_head, a pull)
// stays in the stack while netback cycles through every other pending slot, so the first page's slot is reused.
for (const name of DESIGNS) {
  test(`regression: a packet whose first page went back early, held while its slot is reused, still completes (${name})`, (t) => {
    const rig = new Rig({ design: designByName(name)! });
    const g = rig.guest(1);
    const returned = new Set<number>();
    const settle = (): void => {
      g.vif.flushDealloc();
      for (const r of g.notices.grefs()) returned.add(r);
      g.txResponses();
    };
    const a = g.send([{ size: 600 }, { size: 500 }, { size: 500 }]);
    g.vif.txAction();
    const skbA = rig.held.pop()!;
    t.true(pskbMayPull(skbA, skbHeadlen(skbA) + skbA.shinfo.frags[0]!.size));
    settle();
    // Cycle every pending slot at least once with one-slot packets freed at once.
    for (let i = 0; i < 300; i++) {
      g.send([{ size: 600 }]);
      g.vif.txAction();
      kfreeSkb(rig.held.pop()!);
      settle();
      t.is(g.vif.tx!.inflightPackets, 1, `packet A alone in flight after cycle ${i}`);
    }
    kfreeSkb(skbA);
    settle();
    t.true(a.grefs.every((r) => returned.has(r)));
    t.is(g.vif.tx!.inflightPackets, 0);
    t.true(g.vif.isDrained());
  });
}

// The helpers every AdversaryHost shares (frontend/adversary.ts): honestExchange judged against a fake host whose
// guests deliver, stall or corrupt exactly as the test says.
import test from 'ava';
import { HONEST_EXCHANGE_MS, honestExchange, honestHealthOf, type HonestExchangeHost, type HonestGuestView } from '../../frontend/adversary.js';
import type { Netfront } from '../../frontend/netfront.js';

interface FakeGuest extends HonestGuestView {
  readonly id: number;
  readonly sent: Array<[number, number, number, number]>;
  readonly stats: { rxVerified: number; rxCorruptPayloads: number; endAccessFailures: number; badGrantReturns: number };
}

function fakeGuest(id: number): FakeGuest {
  const stats = { rxVerified: 0, rxCorruptPayloads: 0, endAccessFailures: 0, badGrantReturns: 0 };
  const sent: Array<[number, number, number, number]> = [];
  const nf = { stats, grantsOutstanding: 0, broken: false } as unknown as Netfront;
  return { id, nf, stats, sent, source: { add: (m, i, f, l) => void sent.push([m, i, f, l]), pending: 0 } };
}

/** A host whose run() delivers each guest's frames (to the others and the uplink) unless told otherwise. */
function fakeHost(guests: FakeGuest[], opts: { deliver?: boolean; corrupt?: number; hostError?: string }): HonestExchangeHost<FakeGuest> {
  let uplink = 0;
  return {
    guests,
    remote: { mac: 0xfe, ip: 0xfe },
    macOf: (g) => g.id,
    ipOf: (g) => 100 + g.id,
    nameOf: (g) => `d${g.id}`,
    uplinkVerified: () => uplink,
    health: () => honestHealthOf(guests, () => false),
    run: (_ms, until) => {
      if (opts.deliver !== false) {
        for (const g of guests) {
          for (const [mac, , frames] of g.sent) {
            if (mac === 0xfe) uplink += frames;
            else guests.find((o) => o.id === mac)!.stats.rxVerified += frames;
          }
        }
      }
      guests[0]!.stats.rxCorruptPayloads += opts.corrupt ?? 0;
      return Promise.resolve(until());
    },
    hostError: () => opts.hostError ?? null,
  };
}

test('honestExchange: every guest sends half big, half small frames to each other guest and the remote; all arrive: ok', async (t) => {
  const gs = [fakeGuest(1), fakeGuest(2), fakeGuest(3)];
  t.deepEqual(await honestExchange(fakeHost(gs, {}), 5), { ok: true, value: undefined });
  t.deepEqual(gs[0]!.sent, [
    [2, 102, 3, 1400],
    [2, 102, 2, 120],
    [3, 103, 3, 1400],
    [3, 103, 2, 120],
    [0xfe, 0xfe, 3, 1400],
    [0xfe, 0xfe, 2, 120],
  ]);
});

test('honestExchange: frames that never arrive are an unfinished exchange, named per guest', async (t) => {
  const gs = [fakeGuest(1), fakeGuest(2)];
  t.deepEqual(await honestExchange(fakeHost(gs, { deliver: false }), 4), {
    ok: false,
    error: `exchange of 4 frames did not finish in ${HONEST_EXCHANGE_MS} ms: d1: 0/4 received, 0 unsent, 0 grants out; d2: 0/4 received, 0 unsent, 0 grants out; uplink 0/8`,
  });
});

test('honestExchange: corrupt payloads and host errors fail it even when everything arrived', async (t) => {
  t.deepEqual(await honestExchange(fakeHost([fakeGuest(1), fakeGuest(2)], { corrupt: 2 }), 4), { ok: false, error: '2 corrupt payloads received' });
  t.deepEqual(await honestExchange(fakeHost([fakeGuest(1), fakeGuest(2)], { hostError: 'an honest guest threw: boom' }), 4), {
    ok: false,
    error: 'an honest guest threw: boom',
  });
});

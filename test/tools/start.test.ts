import test from 'ava';
import {
  EXIT_AUDIT,
  EXIT_OK,
  EXIT_USAGE,
  USAGE,
  auditClean,
  main,
  parseStartArgs,
  startSummary,
  type StartIo,
} from '../../tools/start.js';
import type { SystemProgress, SystemReport, ToolstackOptions } from '../../tools/toolstack.js';

test('defaults: 4 guests for 10 s, MTU 1500, no loss, no tap, seed 1', (t) => {
  t.deepEqual(parseStartArgs([]), {
    ok: true,
    value: { guests: 4, seconds: 10, mtu: 1500, loss: 0, mix: null, tap: false, pcap: null, seed: 1, json: false, help: false },
  });
});

test('every flag, with a space or an equals sign; --pcap implies --tap', (t) => {
  const r = parseStartArgs(['--guests', '16', '--seconds=2.5', '--mtu', '9000', '--loss=0.05', '--pcap', 'out.pcap', '--seed=4294967295', '--json']);
  t.deepEqual(r, {
    ok: true,
    value: { guests: 16, seconds: 2.5, mtu: 9000, loss: 0.05, mix: null, tap: true, pcap: 'out.pcap', seed: 4294967295, json: true, help: false },
  });
  t.deepEqual(parseStartArgs(['--tap', '-h']), {
    ok: true,
    value: { guests: 4, seconds: 10, mtu: 1500, loss: 0, mix: null, tap: true, pcap: null, seed: 1, json: false, help: true },
  });
});

const bad: [string[], string][] = [
  [['--guests'], '--guests needs a value'],
  [['--guests', '0'], '--guests must be an integer in [1, 64] but got "0"'],
  [['--guests', '65'], '--guests must be an integer in [1, 64] but got "65"'],
  [['--guests', '2.5'], '--guests must be an integer in [1, 64] but got "2.5"'],
  [['--guests', '--json'], '--guests needs a value'],
  [['--seconds', '0'], '--seconds must be a number in (0, 3600] but got "0"'],
  [['--seconds', '-1'], '--seconds must be a number in (0, 3600] but got "-1"'],
  [['--seconds=3600.5'], '--seconds must be a number in (0, 3600] but got "3600.5"'],
  [['--seconds', '1e3'], '--seconds must be a number in (0, 3600] but got "1e3"'],
  [['--mtu', '575'], '--mtu must be an integer in [576, 9000] but got "575"'],
  [['--mtu', '9001'], '--mtu must be an integer in [576, 9000] but got "9001"'],
  [['--loss', '1'], '--loss must be a number in [0, 1) but got "1"'],
  [['--loss', 'x'], '--loss must be a number in [0, 1) but got "x"'],
  [['--loss'], '--loss needs a value'],
  [['--pcap'], '--pcap needs a file name'],
  [['--pcap='], '--pcap needs a file name'],
  [['--seed', '4294967296'], '--seed must be an integer in [0, 4294967295] but got "4294967296"'],
  [['--seed', '-3'], '--seed must be an integer in [0, 4294967295] but got "-3"'],
  [['--json=yes'], '--json takes no value'],
  [['--tap=1'], '--tap takes no value'],
  [['--mix', 'tcp=1,udp=2'], '--mix: unknown key "udp" (keys: guest, uplink, broadcast, tcp, small, mtu)'],
  [['--guest', '2'], 'unknown option: --guest'],
  [['4'], 'unknown option: 4'],
];
for (const [argv, message] of bad) {
  test(`refuses ${JSON.stringify(argv)}`, (t) => {
    t.deepEqual(parseStartArgs(argv), { ok: false, error: message });
  });
}

test('--help lists every flag', (t) => {
  for (const flag of ['--guests', '--seconds', '--mtu', '--loss', '--mix', '--tap', '--pcap', '--seed', '--json', '--help']) {
    t.true(USAGE.includes(`  ${flag}`), flag);
  }
});

const cleanAudit = { granted: 100, returned: 100, outstanding: 0, leaked: 0, earlyReturns: 0, doubleReturns: 0, corruptPayloads: 0 };

function report(over: Partial<SystemReport> = {}, audit: Partial<SystemReport['audit']> = {}): SystemReport {
  return {
    guests: 2,
    trafficSeconds: 2,
    packets: 1000,
    bytes: 1_000_000,
    returnLatencyUs: { p50: 12.34, p99: 250.06 },
    audit: { ...cleanAudit, ...audit },
    perGuest: [],
    drain: null,
    backend: null,
    errors: [],
    notes: [],
    ...over,
  };
}

test('the JSON summary has exactly the documented keys, in order, with derived rates', (t) => {
  const s = startSummary(report());
  t.is(
    JSON.stringify(s),
    '{"guests":2,"seconds":2,"packets":1000,"bytes":1000000,"pps":500,"gbps":0.004,' +
      '"returnLatencyUs":{"p50":12.3,"p99":250.1},' +
      '"audit":{"granted":100,"returned":100,"outstanding":0,"leaked":0,"earlyReturns":0,"doubleReturns":0,"corruptPayloads":0}}',
  );
  // No sample at all is reported as 0, never as null.
  t.deepEqual(startSummary(report({ returnLatencyUs: { p50: NaN, p99: NaN } })).returnLatencyUs, { p50: 0, p99: 0 });
});

for (const field of ['outstanding', 'leaked', 'earlyReturns', 'doubleReturns', 'corruptPayloads'] as const) {
  test(`audit fails when ${field} is not 0`, (t) => {
    t.true(auditClean(startSummary(report())));
    t.false(auditClean(startSummary(report({}, { [field]: 1 }))));
  });
}

function io(): StartIo & { outs: string[]; errs: string[]; lines: string[] } {
  const outs: string[] = [];
  const errs: string[] = [];
  const lines: string[] = [];
  return {
    outs,
    errs,
    lines,
    out: (l) => void outs.push(...l.split('\n')),
    err: (l) => void errs.push(l),
    progress: (l) => void lines.push(l),
  };
}

const tick: SystemProgress = {
  elapsedSeconds: 1,
  pps: 1234,
  gbps: 0.5,
  outstanding: 7,
  returnLatencyUs: { p50: 10, p99: 90 },
  perGuest: [{ domid: 1, pps: 1234, gbps: 0.5, outstanding: 7, returnLatencyUs: { p50: 10, p99: 90 } }],
};

function fakeBoot(r: SystemReport, seen: ToolstackOptions[] = []) {
  return async (opts: ToolstackOptions) => {
    seen.push(opts);
    return {
      async run(onProgress: (p: SystemProgress) => void): Promise<SystemReport> {
        onProgress(tick);
        return r;
      },
    };
  };
}

test('main: a usage error exits 2 on stderr and never boots', async (t) => {
  const o = io();
  const seen: ToolstackOptions[] = [];
  t.is(await main(['--guests', '0'], o, fakeBoot(report(), seen)), EXIT_USAGE);
  t.deepEqual(o.errs, ['start: --guests must be an integer in [1, 64] but got "0"', 'try --help']);
  t.deepEqual(o.outs, []);
  t.is(seen.length, 0);
});

test('main: --help prints the usage on stdout and exits 0', async (t) => {
  const o = io();
  t.is(await main(['--help'], o, fakeBoot(report())), EXIT_OK);
  t.is(o.outs.join('\n'), USAGE);
});

test('main: flags reach the toolstack; progress goes to the progress sink; with --json the last stdout line is the summary', async (t) => {
  const o = io();
  const seen: ToolstackOptions[] = [];
  t.is(await main(['--guests', '3', '--seconds', '2', '--pcap', 'x.pcap', '--seed', '9', '--json'], o, fakeBoot(report(), seen)), EXIT_OK);
  t.deepEqual(seen, [{ guests: 3, seconds: 2, mtu: 1500, loss: 0, tap: true, pcapPath: 'x.pcap', seed: 9 }]);
  const mixed: ToolstackOptions[] = [];
  t.is(await main(['--mix', 'uplink=1,small=1,mtu=0'], io(), fakeBoot(report(), mixed)), EXIT_OK);
  t.deepEqual(mixed[0]!.mix, { weights: { guest: 0, uplink: 1, broadcast: 0, tcp: 0 }, smallFraction: 1, mtuFraction: 0 });
  t.is(o.lines.length, 1);
  t.true(o.lines[0]!.includes('1.2k pkt/s') && o.lines[0]!.includes('outstanding 7') && o.lines[0]!.includes('d1 '));
  const last = JSON.parse(o.outs[o.outs.length - 1]!);
  t.deepEqual(Object.keys(last), ['guests', 'seconds', 'packets', 'bytes', 'pps', 'gbps', 'returnLatencyUs', 'audit']);
  t.true(o.outs.includes('audit: clean'));
});

test('main: an audit failure or a system error exits 1', async (t) => {
  const o = io();
  t.is(await main(['--json'], o, fakeBoot(report({}, { leaked: 2 }))), EXIT_AUDIT);
  t.true(o.outs.some((l) => l === 'audit: FAILED: 2 leaked'));
  const o2 = io();
  t.is(await main([], o2, fakeBoot(report({ errors: ['guest d1 failed: boom'] }))), EXIT_AUDIT);
  t.true(o2.outs.includes('  error: guest d1 failed: boom'));
  const o3 = io();
  const boom = async (): Promise<never> => {
    throw new Error('no backend');
  };
  t.is(await main([], o3, boom), EXIT_AUDIT);
  t.true(o3.errs[0]!.startsWith('start: Error: no backend'));
});

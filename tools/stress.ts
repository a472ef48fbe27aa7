// Entry point of `npm run stress`: see tools/stress/cli.ts.
import { main, threadMode } from './stress/cli.js';
import { simMode } from './stress/sim.js';

process.exitCode = await main(
  process.argv.slice(2),
  {
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
  },
  { threads: (args, schedule, io) => threadMode(args, schedule, io), sim: simMode },
);

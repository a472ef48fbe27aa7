// Entry point of `npm run lab`: see tools/lab/cli.ts.
import { main } from './lab/cli.js';

process.exitCode = main(process.argv.slice(2), {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
});

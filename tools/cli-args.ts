// Command-line flags shared by the tools (start, fuzz, bench, lab): `--flag value` and `--flag=value`, typed value
// parsers with the exact messages the tools print, and the usage-error/--help handling of their main().
import { parseMixSettings, type MixSettings } from '../frontend/traffic.js';
import { err, ok, type Result } from '../shared/result.js';

/** Exit codes every tool shares: done, and bad command line (1 is each tool's own failure). */
export const EXIT_OK = 0;
export const EXIT_USAGE = 2;

/** How one flag reads its value: `takesValue` says whether it consumes the next argument. */
export interface Flag<T> {
  readonly takesValue: boolean;
  /** Parses the value (null when none was given) of `flag`; errors are exact messages. */
  read(flag: string, value: string | null): Result<T>;
}

/** A flag's parsed type. */
export type FlagValue<F> = F extends Flag<infer T> ? T : never;

/** The parsed command line: each flag's value or its default, and whether --help (or -h) was asked for. */
export type ParsedFlags<S, D> = { -readonly [K in keyof S]: FlagValue<S[K]> | (K extends keyof D ? D[K] : never) } & { help: boolean };

/**
 * Parses argv (without node and script): `spec.name` reads `--name`, `defaults.name` stands when it is not given
 * (the last occurrence wins); the first bad argument's exact message is the error.
 */
export function parseFlags<S extends Record<string, Flag<unknown>>, D extends { readonly [K in keyof S]: unknown }>(
  argv: readonly string[],
  spec: S,
  defaults: D,
): Result<ParsedFlags<S, D>> {
  const values: Record<string, unknown> = { ...defaults, help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    // Only `--name=value` carries an inline value; `-h=x` is just an unknown option.
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq >= 0 ? arg.slice(0, eq) : arg;
    if (name === '--help' || name === '-h') {
      values['help'] = true;
      continue;
    }
    const key = name.slice(2);
    const flag = name.startsWith('--') && Object.hasOwn(spec, key) ? spec[key] : undefined;
    if (flag === undefined) return err(`unknown option: ${arg}`);
    let value: string | null = null;
    if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else if (flag.takesValue) {
      // A following `--x` is the next flag, not this one's value.
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('--')) {
        value = next;
        i++;
      }
    }
    const r = flag.read(name, value);
    if (!r.ok) return r;
    values[key] = r.value;
  }
  return ok(values as ParsedFlags<S, D>);
}

/** A flag without a value (`--json`): true when given. */
export const switchFlag: Flag<true> = {
  takesValue: false,
  read: (flag, value) => (value === null ? ok(true) : err(`${flag} takes no value`)),
};

/** A free-form value such as a path; `what` names it in the message when missing or empty. */
export function stringFlag(what: string): Flag<string> {
  return {
    takesValue: true,
    read: (flag, value) => (value === null || value === '' ? err(`${flag} needs ${what}`) : ok(value)),
  };
}

const DIGITS = /^[0-9]+$/;

/** Whether `v` is all digits and its value lies in [min, max]. */
function integerIn(v: string, min: number, max: number): boolean {
  return DIGITS.test(v) && Number(v) >= min && Number(v) <= max;
}

/** A decimal integer in [min, max]; `message` replaces the default `must be an integer in [min, max] but got "v"`. */
export function integerFlag(min: number, max: number, message?: string): Flag<number> {
  return {
    takesValue: true,
    read: (flag, value) => {
      if (value === null) return err(`${flag} needs a value`);
      if (!integerIn(value, min, max)) return err(message ?? `${flag} must be an integer in [${min}, ${max}] but got "${value}"`);
      return ok(Number(value));
    },
  };
}

/** The seed every tool takes: an integer in [0, 2^32 - 1] (seeds sfc32 in shared/random.ts). */
export const seedFlag: Flag<number> = integerFlag(0, 0xffffffff);

/** --mix of the tools that run guest traffic: frontend/traffic.ts parseMixSettings. */
export const mixFlag: Flag<MixSettings> = {
  takesValue: true,
  read: (flag, value) => {
    if (value === null || value === '') return err(`${flag} needs a value such as tcp=1,uplink=1`);
    const m = parseMixSettings(value);
    return m.ok ? m : err(`${flag}: ${m.error}`);
  },
};

/** The --mix lines of a tool's --help: descriptions start at column `col`; `defaults` is the tool's own mix. */
export function mixUsage(col: number, defaults: string): string[] {
  const pad = ' '.repeat(col);
  return [
    `${'  --mix TEXT'.padEnd(col)}the guests' traffic: guest=W,uplink=W,broadcast=W,tcp=W (relative weights,`,
    `${pad}kinds not named weigh 0) and small=F,mtu=F (fractions of UDP frames that are 64 B and MTU-sized);`,
    `${pad}default ${defaults}`,
  ];
}

/** Digits with an optional fraction: `5`, `5.`, `.5`, `5.25` (no sign, no exponent). */
export const DECIMAL = /^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$/;

/** The bounds of a number flag; an open end excludes its bound. */
export interface Interval {
  readonly min: number;
  readonly max: number;
  readonly minOpen?: boolean;
  readonly maxOpen?: boolean;
}

/** An interval as the messages print it: `(0, 3600]`, `[0, 1)`. */
export function formatInterval(r: Interval): string {
  return `${r.minOpen === true ? '(' : '['}${r.min}, ${r.max}${r.maxOpen === true ? ')' : ']'}`;
}

/** A decimal number (written as `syntax` accepts) in the interval `range`. */
export function numberFlag(range: Interval, syntax: RegExp = DECIMAL): Flag<number> {
  return {
    takesValue: true,
    read: (flag, value) => {
      if (value === null) return err(`${flag} needs a value`);
      const n = Number(value);
      const above = range.minOpen === true ? n > range.min : n >= range.min;
      const below = range.maxOpen === true ? n < range.max : n <= range.max;
      if (!syntax.test(value) || !above || !below) return err(`${flag} must be a number in ${formatInterval(range)} but got "${value}"`);
      return ok(n);
    },
  };
}

/** One of `names`, looked up by `lookup` (which decides what is accepted; `names` is what the message lists). */
export function enumFlag<T>(names: readonly string[], lookup: (name: string) => T | undefined): Flag<string> {
  return {
    takesValue: true,
    read: (flag, value) => {
      if (value === null) return err(`${flag} needs a value`);
      if (lookup(value) === undefined) return err(`${flag} must be one of ${names.join(', ')} but got "${value}"`);
      return ok(value);
    },
  };
}

/** A comma-separated list of integers, each in [min, max]. */
export function integerListFlag(min: number, max: number): Flag<number[]> {
  return {
    takesValue: true,
    read: (flag, value) => {
      if (value === null || value === '') return err(`${flag} needs a value`);
      const list: number[] = [];
      for (const p of value.split(',')) {
        if (!integerIn(p, min, max)) return err(`${flag} must list integers in [${min}, ${max}] but got "${p}"`);
        list.push(Number(p));
      }
      return ok(list);
    },
  };
}

/** A comma-separated selection from `known` by `name`, refusing empty items, unknown names and duplicates. */
export function selectionFlag<T>(known: readonly T[], name: (t: T) => string): Flag<T[]> {
  return {
    takesValue: true,
    read: (flag, value) => {
      if (value === null) return err(`${flag} needs a value`);
      const out: T[] = [];
      for (const item of value.split(',')) {
        if (item === '') return err(`${flag} has an empty item in "${value}"`);
        const t = known.find((k) => name(k) === item);
        if (t === undefined) return err(`${flag}: unknown "${item}"; expected some of ${known.map(name).join(', ')}`);
        if (out.includes(t)) return err(`${flag} names "${item}" twice`);
        out.push(t);
      }
      return ok(out);
    },
  };
}

/** Where a tool prints its usage error or its --help text. */
export interface UsageIo {
  out(line: string): void;
  err(line: string): void;
}

/** A tool's main() either stops here with an exit code, or goes on with the parsed arguments. */
export type CommandLine<T> = { readonly exit: number } | { readonly args: T };

/** Reports a bad command line (`tool: message`, `try --help`, exit 2) or prints `usage` for --help (exit 0). */
export function commandLine<T extends { readonly help: boolean }>(tool: string, parsed: Result<T>, usage: string, io: UsageIo): CommandLine<T> {
  if (!parsed.ok) {
    io.err(`${tool}: ${parsed.error}`);
    io.err('try --help');
    return { exit: EXIT_USAGE };
  }
  if (parsed.value.help) {
    io.out(usage);
    return { exit: EXIT_OK };
  }
  return { args: parsed.value };
}

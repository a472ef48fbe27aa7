// Results for parsing peer data: peer data never raises, it returns an exact message (STYLE.md).

/** A value, or the exact reason it could not be produced. */
export type Result<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

/** Wraps a value as a successful result. */
export function ok<T>(value: T): Result<T> {
  return { ok: true, value };
}

/** Wraps an exact error message as a failed result. */
export function err<T = never>(error: string): Result<T> {
  return { ok: false, error };
}

// The one error type of the API and the registry of its codes: every 4xx/5xx body comes from here.

export const errorCodes = {
  BAD_REQUEST: 400,
  VALIDATION_FAILED: 400,
  INVALID_JSON: 400,
  UNAUTHORIZED: 401,
  TOKEN_EXPIRED: 401,
  FORBIDDEN: 403,
  WRONG_PASSWORD: 403,
  NOT_FOUND: 404,
  ROUTE_NOT_FOUND: 404,
  VM_NOT_FOUND: 404,
  HOST_NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  TASK_NOT_FOUND: 404,
  TOKEN_NOT_FOUND: 404,
  USER_NOT_FOUND: 404,
  POOL_NOT_FOUND: 404,
  VOLUME_NOT_FOUND: 404,
  LEASE_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  NAME_TAKEN: 409,
  CONFLICT: 409,
  VM_BUSY: 409,
  INVALID_STATE: 409,
  GENERATION_MISMATCH: 409,
  IMAGE_IN_USE: 409,
  HOST_NOT_READY: 409,
  HA_ADMISSION: 409,
  NO_CAPACITY: 422,
  IMAGE_INVALID: 422,
  UNSUPPORTED: 422,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  UNAVAILABLE: 503,
} as const;

export type ErrorCode = keyof typeof errorCodes;

export class AppError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'AppError';
    this.status = errorCodes[code];
  }

  toBody() {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

export const notFound = (code: ErrorCode, kind: string, id: string) =>
  new AppError(code, `${kind} ${id} not found`, { id });

"""Foundation: settings, errors, time and periods, money, org ids, the MongoDB and Redis
handles, idempotent writes, logs, the Redis org lock, and the local store behind file:// and
mongomock:// URLs (mongomock is imported only when such a URL is used).

May import: nothing else in `chores` (third-party libraries only).
"""

"""Encryption at rest: the BKD1 chunked AES-256-GCM format (:mod:`backupd.crypto.bkd1`) and the
keyring of master keys (:mod:`backupd.crypto.keyring`).

Import the submodules directly. This package module stays empty on purpose: the keyring needs
only the standard library, while ``bkd1`` loads ``cryptography``, and tools that only inspect
headers or manage key files should not pay for that import.
"""

"""How maild compares email addresses: one rule, used everywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AddressRules:
    fold_plus: bool = True  # customer+tag@x is customer@x
    case_sensitive_local: bool = False

    def key(self, email: str) -> str:
        """The comparison form of an address: domain lowercased, local part per the rules."""
        local, at, domain = email.strip().rpartition("@")
        if not at:
            return email.strip().lower()
        if self.fold_plus and "+" in local:
            local = local.split("+", 1)[0] or local
        if not self.case_sensitive_local:
            local = local.lower()
        return f"{local}@{domain.lower()}"

"""import-linter contract types of daetui's own (pyproject.toml: [tool.importlinter] contract_types).

`private`: a module whose name starts with `_` (`daetui.outbound._share`) is
its package's own business. Modules of the same package may import it; a module
of any other package may not, and must use what the package offers publicly.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private_package(module: str) -> str | None:
    """The package that owns `module` if a part of its name is private (`a.b._c.d` -> `a.b`), else None."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:i])
    return None


class PrivateModulesContract(Contract):
    """No module imports a private module (`_name`) of a package it is not part of.

    Configuration: `containers`, the packages checked (e.g. ["daetui"]).
    """

    type_name = "private"

    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        breaches = []
        containers = tuple(self.containers)  # type: ignore[attr-defined]
        for importer in sorted(graph.modules):
            if not importer.startswith(containers):
                continue
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                owner = _private_package(imported)
                if owner is None or importer == owner or importer.startswith(owner + "."):
                    continue
                lines = sorted(d["line_number"] for d in graph.get_import_details(importer=importer,
                                                                                     imported=imported))
                breaches.append({"importer": importer, "imported": imported, "lines": lines})
        return ContractCheck(kept=not breaches, metadata={"breaches": breaches})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for b in check.metadata["breaches"]:
            where = ", ".join(f"l.{n}" for n in b["lines"])
            output.print_error(f"{b['importer']} imports {b['imported']}, private to its package ({where})",
                               bold=False)
        output.new_line()

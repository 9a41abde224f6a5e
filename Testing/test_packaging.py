"""Slicer packaging: the .ui parses and has every widget the module uses; CMake lists every file; metadata."""
import ast
import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "RegistrationMisalignment"


def test_ui_parses_and_has_every_widget_the_module_uses():
    tree = ElementTree.parse(MODULE / "Resources" / "UI" / "RegistrationMisalignment.ui")
    names = {w.get("name") for w in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "RegistrationMisalignment.py").read_text()))
    assert used and used <= names, used - names


def test_module_cmake_lists_every_python_file_and_resource():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "RegistrationMisalignment")
    for path in sorted(MODULE.rglob("*.py")) + sorted((MODULE / "Resources").rglob("*.*")):
        assert str(path.relative_to(MODULE)) in cmake, path
    assert "slicer_add_python_unittest(SCRIPT" in cmake


def test_module_file_has_the_four_slicer_classes_and_no_qt_in_the_engine():
    tree = ast.parse((MODULE / "RegistrationMisalignment.py").read_text())
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"RegistrationMisalignment", "RegistrationMisalignmentWidget", "RegistrationMisalignmentLogic",
            "RegistrationMisalignmentTest"} <= classes
    for path in (MODULE / "RegistrationMisalignmentLib").glob("*.py"):
        imports = re.findall(r"^\s*(?:import|from)\s+(\w+)", path.read_text(), re.MULTILINE)
        assert not {"qt", "ctk"} & set(imports), path
        if path.name != "scene.py":
            assert "slicer" not in imports, path


def test_extension_metadata_and_index_entry():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', cmake), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in cmake
    entry = json.loads((ROOT / "RegistrationMisalignment.json").read_text())
    assert entry["category"] == "Registration" and entry["build_dependencies"] == ["PyTorch"]

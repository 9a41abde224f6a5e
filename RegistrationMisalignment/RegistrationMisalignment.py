"""3D Slicer module: show where a chest-CT registration is wrong (correct / poor / wrong overlay)."""
import importlib.util
import logging

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "gpu", "cpu")
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "tqdm": "tqdm>=4.60",
                    "matplotlib": "matplotlib>=3.5"}  # figures: batch thumbnails, the demo
POLL_MILLISECONDS = 200


class RegistrationMisalignment(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Registration Misalignment"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["RegistrationMisalignment developers"]
        self.parent.helpText = (
            "Predicts where a registration of two chest CTs is wrong. Pick the fixed volume and the moving volume "
            "already registered to it (or the moving volume and the registration transform), press Apply, and the "
            "fixed volume is overlaid with green (correct, &lt;= 3 mm), yellow (poor, 3-6 mm) and red (wrong, "
            "&gt; 6 mm) regions inside the lungs or your mask, with a colour legend. A statistics table gives the "
            "volume and percentage of each class, and a point list marks the largest regions called wrong (click "
            "one in the Markups module to go there). Runs in the background; the inputs are never modified.")
        self.parent.acknowledgementText = (
            "Method: H. Sokooti, S. Yousefi, M. S. Elmahdy, B. P. F. Lelieveldt, M. Staring, Hierarchical "
            "Prediction of Registration Misalignment using a Convolutional LSTM: Application to Chest CT Scans, "
            "IEEE Access 9 (2021) 62008-62020. Trained on synthetic deformations of public chest CTs "
            "(TCIA NSCLC-Radiogenomics, CC BY 3.0; ITKElastix example data).")


class RegistrationMisalignmentLogic(ScriptedLoadableModuleLogic):
    """Batch-scripting entry point: everything the module does, without the GUI."""

    def process(self, fixedVolume, movingVolume, maskNode=None, transformNode=None, device="auto",
                probabilities=False, weights=None, progress=None, amp=False):
        """Predict in this process and return the output nodes (label map, colours, segmentation, table)."""
        from RegistrationMisalignmentLib.inference import MisalignmentPredictor
        from RegistrationMisalignmentLib.scene import predict_nodes
        predictor = MisalignmentPredictor.load(weights, device=self.usableDevice(device), amp=amp)
        return predict_nodes(fixedVolume, movingVolume, maskNode, transformNode, predictor, progress, probabilities)

    def startBackground(self, fixedVolume, movingVolume, maskNode=None, transformNode=None, device="auto",
                        weights=None, progress=None, amp=False, probabilities=False):
        """Start predicting in a child process; poll() the returned job, then finishBackground() with the same
        `probabilities`."""
        from RegistrationMisalignmentLib.scene import start_prediction
        return start_prediction(fixedVolume, movingVolume, maskNode, transformNode, weights,
                                self.usableDevice(device), progress, amp, probabilities)

    def finishBackground(self, job, fixedVolume, probabilities=False):
        """Create the output nodes from a finished background job."""
        from RegistrationMisalignmentLib.scene import add_result_nodes
        return add_result_nodes(fixedVolume, job.result(), probabilities)

    def usableDevice(self, device):
        """The requested device, or 'cpu' (with a logged note) when no GPU is usable."""
        import torch
        if device == "gpu" and not torch.cuda.is_available():
            logging.warning("RegistrationMisalignment: no usable GPU, running on the CPU")
            return "cpu"
        return device

    def missingPackages(self):
        """Python packages the engine needs that are not installed yet (torch included)."""
        names = ["torch"] + list(PIP_REQUIREMENTS)
        return [name for name in names if importlib.util.find_spec(name) is None]

    def installDependencies(self, confirm):
        """Install torch through the PyTorch extension and the other packages with pip, if `confirm` agrees."""
        missing = self.missingPackages()
        if not missing:
            return True
        if not confirm(f"RegistrationMisalignment needs these Python packages: {', '.join(missing)}. Install now?"):
            return False
        if "torch" in missing:
            import PyTorchUtils
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                            torchVersionRequirement=">=1.13") is None:
                return False
        for name in missing:
            if name in PIP_REQUIREMENTS:
                slicer.util.pip_install(PIP_REQUIREMENTS[name])
        return not self.missingPackages()


class RegistrationMisalignmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the UI to the logic; prediction runs in a child process with progress and Cancel."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.deviceNote = ""
        self.jobFixedVolume = None  # the outputs go on the fixed volume the job started with
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MILLISECONDS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        """Load the .ui file and connect the widgets."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RegistrationMisalignment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RegistrationMisalignmentLogic()
        self.ui.deviceComboBox.addItems(["auto", "GPU", "CPU"])
        for selector in (self.ui.fixedSelector, self.ui.movingSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacity)
        self.updateButtons()

    def cleanup(self):
        """Stop a running prediction when the module is closed."""
        self.onCancel()
        self.removeObservers()

    def updateButtons(self, *_):
        """Apply needs a fixed and a moving volume and no running job."""
        ready = self.ui.fixedSelector.currentNode() is not None and self.ui.movingSelector.currentNode() is not None
        self.ui.applyButton.enabled = ready and self.job is None
        self.ui.cancelButton.enabled = self.job is not None

    def onApply(self):
        """Check dependencies, then start the background prediction."""
        try:
            installed = self.logic.installDependencies(lambda text: slicer.util.confirmOkCancelDisplay(text))
        except Exception as error:  # an offline network or a failed pip: shown, never a silent failure
            self.showError(f"installing the Python packages failed ({error}); check the network connection or "
                           "install them from Slicer's Python console")
            return
        if not installed:
            self.showStatus("Python packages are missing; prediction not started.")
            return
        import torch
        device = DEVICES[self.ui.deviceComboBox.currentIndex]
        self.deviceNote = "" if device == "cpu" or torch.cuda.is_available() else "No usable GPU: on the CPU. "
        fixedVolume = self.ui.fixedSelector.currentNode()
        probabilities = self.ui.probabilitiesCheckBox.checked  # as asked at Apply, not at the end
        try:
            self.job = self.logic.startBackground(
                fixedVolume, self.ui.movingSelector.currentNode(),
                self.ui.maskSelector.currentNode(), self.ui.transformSelector.currentNode(), device,
                progress=self.onProgress, amp=self.ui.ampCheckBox.checked, probabilities=probabilities)
        except Exception as error:  # shown to the user, never a silent failure
            self.showError(error)
            return
        self.jobFixedVolume = fixedVolume
        self.jobProbabilities = probabilities
        self.ui.progressBar.value = 0
        self.timer.start()
        self.updateButtons()

    def onProgress(self, fraction, message):
        """Show progress reported by the child process."""
        self.ui.progressBar.value = int(100 * fraction)
        self.showStatus(self.deviceNote + message)

    def onPoll(self):
        """Collect progress; when the child is done, create the output nodes."""
        if self.job is None or not self.job.poll():
            return
        self.timer.stop()
        job, self.job = self.job, None
        try:
            from RegistrationMisalignmentLib.scene import status_text
            nodes = self.logic.finishBackground(job, self.jobFixedVolume, self.jobProbabilities)
            nodes["segmentation"].GetDisplayNode().SetOpacity2DFill(self.ui.opacitySlider.value)
            for warning in nodes["summary"].get("warnings") or []:
                logging.warning(f"RegistrationMisalignment: {warning}")
            self.showStatus(status_text(nodes["summary"]))
        except Exception as error:
            self.showError(error)
        self.updateButtons()

    def onCancel(self):
        """Kill the child process; nothing is added to the scene."""
        if self.job is not None:
            self.timer.stop()
            self.job.cancel()
            self.job = None
            self.ui.progressBar.value = 0
            self.showStatus("Cancelled.")
        if hasattr(self, "ui"):
            self.updateButtons()

    def onOpacity(self, value):
        """Set the overlay opacity of the output segmentation, if there is one."""
        fixed = self.ui.fixedSelector.currentNode()
        if fixed is None:
            return
        from RegistrationMisalignmentLib.scene import output_segmentation
        node = output_segmentation(fixed)
        if node is not None and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetOpacity2DFill(value)

    def showStatus(self, text):
        """Status line under the progress bar."""
        self.ui.statusLabel.text = text

    def showError(self, error):
        """Show an error in the module and the log."""
        logging.error(f"RegistrationMisalignment: {error}")
        self.showStatus(f"Error: {error}")
        self.ui.progressBar.value = 0


class RegistrationMisalignmentTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: phantom pair with a known field, the logic, and where 'wrong' is found."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_known_field_is_found()

    def test_known_field_is_found(self):
        import numpy as np
        from RegistrationMisalignmentLib import labels as L
        from RegistrationMisalignmentLib.demo import synthetic_pair
        from RegistrationMisalignmentLib.phantom import make_chest_phantom
        from RegistrationMisalignmentLib.scene import update_volume_node
        logic = RegistrationMisalignmentLogic()
        self.assertTrue(logic.installDependencies(lambda text: True))
        ct, lungs = make_chest_phantom(0)
        pair = synthetic_pair(ct, lungs, "single_frequency", 12.0, seed=0)
        fixed = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed")
        moving = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving")
        update_volume_node(fixed, pair.fixed)
        update_volume_node(moving, pair.moving)
        before = slicer.util.arrayFromVolume(moving).copy()
        nodes = logic.process(fixed, moving, device="cpu")
        labels = slicer.util.arrayFromVolume(nodes["labels"])
        self.assertEqual(labels.shape, slicer.util.arrayFromVolume(fixed).shape)
        self.assertTrue(np.array_equal(before, slicer.util.arrayFromVolume(moving)))
        self.assertEqual(nodes["segmentation"].GetSegmentation().GetNumberOfSegments(), 3)
        self.assertEqual(nodes["regions"].GetNumberOfControlPoints(), len(nodes["summary"]["wrong_regions"]))
        wrong = labels == L.WRONG
        correct = labels == L.CORRECT
        self.assertGreater(pair.magnitude_mm[wrong].mean(), pair.magnitude_mm[correct].mean())
        self.delayDisplay("RegistrationMisalignment self-test passed")

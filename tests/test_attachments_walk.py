"""Finding Attachments in resources by the R4 element model."""

from __future__ import annotations

from fhirvault.fhir.attachments import iter_attachments


def test_attachments_everywhere_in_a_resource() -> None:
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"url": "a"}}, {"attachment": {"url": "b"}}],
           "contained": [{"resourceType": "Media", "content": {"url": "c"}}],
           "extension": [{"url": "x", "valueAttachment": {"url": "d"}}],
           "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/1"}}]}
    assert [(p, a["url"]) for p, a in iter_attachments(doc)] == [
        ("DocumentReference.content[0].attachment", "a"), ("DocumentReference.content[1].attachment", "b"),
        ("DocumentReference.contained[0].content", "c"), ("DocumentReference.extension[0].valueAttachment", "d")]


def test_nested_backbone_elements_and_content_references() -> None:
    qr = {"resourceType": "QuestionnaireResponse", "item": [{"answer": [
        {"valueAttachment": {"url": "e"}, "item": [{"answer": [{"valueAttachment": {"url": "f"}}]}]}]}]}
    assert [p for p, _ in iter_attachments(qr)] == [
        "QuestionnaireResponse.item[0].answer[0].valueAttachment",
        "QuestionnaireResponse.item[0].answer[0].item[0].answer[0].valueAttachment"]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "a", "part": [{"name": "b", "valueAttachment": {"url": "g"}}]},
        {"name": "r", "resource": {"resourceType": "Patient", "photo": [{"url": "h"}]}}]}
    assert [p for p, _ in iter_attachments(params)] == [
        "Parameters.parameter[0].part[0].valueAttachment", "Parameters.parameter[1].resource.photo[0]"]


def test_the_attachments_are_the_resources_own_objects() -> None:
    media = {"resourceType": "Media", "status": "completed", "content": {"url": "https://x.example/a"},
             "note": [{"text": "not an attachment"}]}
    for _, attachment in iter_attachments(media):
        attachment["url"] = "Binary/1"
    assert media["content"] == {"url": "Binary/1"}

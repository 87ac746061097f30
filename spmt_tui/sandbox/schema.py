"""Constrained schema rules for the XML files of an Import Migration API package.

SharePoint Online validates every package file against a constrained subset of the content
deployment schemas and ends the job on the first violation, with the text of .NET's
``XmlSchemaValidationException`` (for example "The 'Description' attribute is not declared.").
This module keeps those rules as tables (element content, declared attributes, the types that
carry ``anyAttribute``, enumerations, required attributes) and a small validator over a tree
built with the stdlib expat parser. It does not read any XSD file at run time.

Sources of the tables: the constrained XSDs Microsoft published for Manifest.xml,
ExportSettings.xml and RootObjectMap.xml; for the other files, the element pages of the
deployment schema reference and [MS-PRIMEPF], plus attributes that working clients send
(``SchemaVersion/@ObjectsProcessed``, ``RootWebOnlyLists``, ``User/@Flags``).
"""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field
from typing import Iterator

XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_EXCEPTION = "System.Xml.Schema.XmlSchemaValidationException"
XML_EXCEPTION = "System.Xml.XmlException"

MANIFEST_NS = "urn:deployment-manifest-schema"
EXPORT_SETTINGS_NS = "urn:deployment-exportsettings-schema"
SYSTEM_DATA_NS = "urn:deployment-systemdata-schema"
USER_GROUP_NS = "urn:deployment-usergroupmap-schema"
ROOT_OBJECT_MAP_NS = "urn:deployment-rootobjectmap-schema"
REQUIREMENTS_NS = "urn:deployment-requirements-schema"
LOOKUP_LIST_MAP_NS = "urn:deployment-lookuplistmap-schema"
VIEW_FORMS_LIST_NS = "urn:deployment-viewformlist-schema"
# NOTE: one client codebase writes the plural spelling; Microsoft does not confirm either, so
# both are accepted.
VIEW_FORMS_LIST_NS_PLURAL = "urn:deployment-viewformslist-schema"


class XmlSchemaError(Exception):
    """A package XML file that is not well-formed or breaks its schema.

    ``message`` is phrased like .NET's exception text; ``exception_type`` names the .NET type the
    service reports, so ``report_text`` matches what a real job's JobFatalError carries.
    """

    def __init__(
        self, message: str, *, line: int = 0, column: int = 0, exception_type: str = SCHEMA_EXCEPTION
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.exception_type = exception_type

    @property
    def report_text(self) -> str:
        return f"[{self.exception_type}] [{self.message}]"


# -- parsed tree -----------------------------------------------------------------------------


@dataclass
class XmlElement:
    """One element of a parsed package file, with its position for error messages."""

    namespace: str
    name: str
    attributes: dict[str, str]
    line: int
    column: int
    children: list["XmlElement"] = field(default_factory=list)
    text: str = ""

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attributes.get(name, default)

    def child(self, name: str) -> "XmlElement | None":
        for element in self.children:
            if element.name == name:
                return element
        return None

    def children_named(self, name: str) -> list["XmlElement"]:
        return [element for element in self.children if element.name == name]

    def iter(self, name: str) -> Iterator["XmlElement"]:
        """Yield this element and its descendants named ``name``, in document order."""
        stack = [self]
        while stack:
            element = stack.pop()
            if element.name == name:
                yield element
            stack.extend(reversed(element.children))


def parse_xml(data: bytes) -> XmlElement:
    """Parse ``data`` into an element tree; raise XmlSchemaError when it is not well-formed.

    Document type declarations are rejected, so entity expansion cannot be used against the
    sandbox.
    """
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    stack: list[XmlElement] = []
    root: list[XmlElement] = []

    def split(qualified: str) -> tuple[str, str]:
        namespace, _, local = qualified.rpartition(" ")
        return namespace, local

    def start(qualified: str, attrs: dict[str, str]) -> None:
        namespace, local = split(qualified)
        attributes: dict[str, str] = {}
        for attr_name, value in attrs.items():
            attr_ns, attr_local = split(attr_name)
            attributes[f"{{{attr_ns}}}{attr_local}" if attr_ns else attr_local] = value
        element = XmlElement(
            namespace, local, attributes, parser.CurrentLineNumber, parser.CurrentColumnNumber + 1
        )
        if stack:
            stack[-1].children.append(element)
        else:
            root.append(element)
        stack.append(element)

    def end(_qualified: str) -> None:
        stack.pop()

    def text(content: str) -> None:
        if stack:
            stack[-1].text += content

    def doctype(*_args: object) -> None:
        raise XmlSchemaError(
            "For security reasons DTD is prohibited in this XML document.",
            line=parser.CurrentLineNumber,
            column=parser.CurrentColumnNumber + 1,
            exception_type=XML_EXCEPTION,
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as error:
        message = xml.parsers.expat.ErrorString(error.code)
        raise XmlSchemaError(
            f"The XML is not well-formed: {message}. Line {error.lineno}, position {error.offset + 1}.",
            line=error.lineno,
            column=error.offset + 1,
            exception_type=XML_EXCEPTION,
        ) from None
    if not root:
        raise XmlSchemaError("Root element is missing.", exception_type=XML_EXCEPTION)
    return root[0]


# -- schema model ----------------------------------------------------------------------------

UNBOUNDED = None


@dataclass(frozen=True)
class Attribute:
    type: str = "string"
    required: bool = False


@dataclass(frozen=True)
class Particle:
    """An element allowed in a content model: its name, type name and occurrence bounds."""

    name: str
    type: str
    min: int = 0
    max: int | None = 1


@dataclass(frozen=True)
class Sequence:
    particles: tuple[Particle, ...]


@dataclass(frozen=True)
class Choice:
    """Children taken from ``particles`` in any order, ``min`` to ``max`` of them in total."""

    particles: tuple[Particle, ...]
    min: int = 0
    max: int | None = 1


class AnyContent:
    """Content that is not validated (``xs:any processContents="skip"``)."""


ANY = AnyContent()
Content = Sequence | Choice | AnyContent | None


@dataclass(frozen=True)
class ComplexType:
    attributes: dict[str, Attribute]
    content: Content = None
    any_attribute: bool = False
    mixed: bool = False


@dataclass(frozen=True)
class Enumeration:
    type_name: str
    values: frozenset[str]


@dataclass(frozen=True)
class Schema:
    namespace: str
    root_name: str
    root_type: str
    types: dict[str, ComplexType]
    enumerations: dict[str, Enumeration]


def _attrs(*names: str, **typed: str) -> dict[str, Attribute]:
    """Build an attribute table: plain names are optional strings, ``Name="type"`` sets a type.

    A type ending in ``!`` marks the attribute as required (``Title="string!"``).
    """
    table = {name: Attribute() for name in names}
    for name, type_name in typed.items():
        required = type_name.endswith("!")
        table[name] = Attribute(type_name.rstrip("!"), required)
    return table


def _seq(*particles: Particle) -> Sequence:
    return Sequence(tuple(particles))


def _many(name: str, type_name: str, minimum: int = 0) -> Particle:
    return Particle(name, type_name, minimum, UNBOUNDED)


def _opt(name: str, type_name: str) -> Particle:
    return Particle(name, type_name, 0, 1)


_OPEN = ComplexType({}, ANY, any_attribute=True)


# -- Manifest.xml (urn:deployment-manifest-schema) -------------------------------------------

_EVENT_RECEIVER_TYPES = frozenset(
    """ItemAdding ItemUpdating ItemDeleting ItemCheckingIn ItemCheckingOut ItemUncheckingOut
    ItemAttachmentAdding ItemAttachmentDeleting ItemFileMoving ItemVersionDeleting FieldAdding
    FieldUpdating FieldDeleting ListAdding ListDeleting SiteDeleting WebDeleting WebMoving
    WebAdding GroupAdding GroupUpdating GroupDeleting GroupUserAdding GroupUserDeleting
    RoleDefinitionAdding RoleDefinitionUpdating RoleDefinitionDeleting RoleAssignmentAdding
    RoleAssignmentDeleting InheritanceBreaking InheritanceResetting ItemAdded ItemUpdated
    ItemDeleted ItemCheckedIn ItemCheckedOut ItemUncheckedOut ItemAttachmentAdded
    ItemAttachmentDeleted ItemFileMoved ItemFileConverted ItemFileTransformed ItemVersionDeleted
    FieldAdded FieldUpdated FieldDeleted ListAdded ListDeleted SiteDeleted WebDeleted WebMoved
    WebProvisioned WebRestored GroupAdded GroupUpdated GroupDeleted GroupUserAdded
    GroupUserDeleted RoleDefinitionAdded RoleDefinitionUpdated RoleDefinitionDeleted
    RoleAssignmentAdded RoleAssignmentDeleted InheritanceBroken InheritanceReset EmailReceived
    ContextEvent InvalidReceiver WorkflowCompleted""".split()
)


def _enums(namespace: str, **values: str) -> dict[str, Enumeration]:
    return {
        name: Enumeration(f"{namespace}:{name}", frozenset(text.split()))
        for name, text in values.items()
    }


_MANIFEST_ENUMS = _enums(
    MANIFEST_NS,
    TRUEFALSE="TRUE FALSE true false",
    SPObjectType="SPList SPDocumentLibrary SPListItem SPFolder SPFile SPContentType "
    "SPDocumentTemplate DeploymentUserX DeploymentGroupX DeploymentRoles DeploymentRoleX "
    "DeploymentRoleAssignments DeploymentRoleAssignmentX",
    SPDictionaryEntryValueType="String Integer Time StringVector Boolean FileSystemTime "
    "IntVector Double LongText Empty",
    SPDictionaryEntryAccess="ReadOnly ReadWrite",
    SPModerationStatusType="Approved Denied Pending Draft Scheduled",
    SPBaseType="UnspecifiedBaseType GenericList DocumentLibrary Unused DiscussionBoard Survey Issue",
    SPEventHostType="Site Web List ListItem ContentType Feature",
    SPEventReceiverSynchronization="Default Synchronous Asynchronous",
    ListItemDocType="File Folder Unknown",
)
_MANIFEST_ENUMS["SPEventReceiverType"] = Enumeration(
    f"{MANIFEST_NS}:SPEventReceiverType", _EVENT_RECEIVER_TYPES
)

# NOTE: HasUniqueRoleAssignments is not in the published constrained XSD, but Microsoft's own
# sample manifest puts it on DocumentLibrary, so the sandbox accepts it.
_LIST_ATTRIBUTES = _attrs(
    "RootFolderId",
    "ParentWebUrl",
    Id="string!",
    Title="string!",
    RootFolderUrl="string!",
    ParentWebId="string!",
    BaseType="SPBaseType",
    BaseTemplate="string!",
    HasUniqueRoleAssignments="boolean",
)
_LIST_CONTENT = Choice(
    (
        _opt("ContentTypes", "SPContentTypeCollection"),
        _opt("DeletedContentTypes", "ListDeletedContentTypes"),
    ),
    0,
    11,
)

_MANIFEST_TYPES: dict[str, ComplexType] = {
    "SPGenericObjectCollection": ComplexType({}, _seq(_many("SPObject", "SPGenericObject"))),
    "SPGenericObject": ComplexType(
        _attrs(
            "Id", "ParentId", "Name", "ParentWebId", "ParentWebUrl", "ContentTypeId", "Url",
            ObjectType="SPObjectType", IsDeleted="boolean", IsSiteRename="boolean",
        ),
        Choice(
            (
                _opt("List", "SPList"),
                _opt("DocumentLibrary", "SPDocumentLibrary"),
                _opt("ListItem", "SPListItem"),
                _opt("Folder", "SPFolder"),
                _opt("File", "SPFile"),
                _opt("ContentType", "SPContentType"),
                _opt("UserX", "Open"),
                _opt("GroupX", "Open"),
                _opt("Roles", "DeploymentRoles"),
                _opt("RoleX", "Open"),
                _opt("RoleAssignments", "DeploymentRoleAssignments"),
                _opt("RoleAssignmentX", "Open"),
            ),
            0,
            1,
        ),
    ),
    "Open": _OPEN,
    "DeploymentRole": ComplexType(
        _attrs(
            "Description", "RoleOrder", "Type",
            RoleId="string!", Title="string!", PermMask="string!", Hidden="boolean!",
        )
    ),
    "DeploymentRoles": ComplexType({}, _seq(_many("Role", "DeploymentRole"))),
    "DeploymentAssignment": ComplexType(_attrs(RoleId="string!", PrincipalId="string!")),
    "DeploymentRoleAssignment": ComplexType(
        _attrs(
            "AnonymousPermMask",
            ScopeId="string!", RoleDefWebId="string!", RoleDefWebUrl="string!",
            ObjectId="string!", ObjectType="string!", ObjectUrl="string!",
        ),
        _seq(_many("Assignment", "DeploymentAssignment")),
    ),
    "DeploymentRoleAssignments": ComplexType(
        {}, _seq(_many("RoleAssignment", "DeploymentRoleAssignment"))
    ),
    "DictionaryEntry": ComplexType(
        _attrs(
            "Value", "Value2", "Id",
            Name="string!", Type="SPDictionaryEntryValueType", Access="SPDictionaryEntryAccess",
        )
    ),
    "Dictionary": ComplexType({}, _seq(_many("Property", "DictionaryEntry"))),
    "SPAttachment": ComplexType(
        _attrs(
            "Name", "DirName", "Url", "Id", "ParentWebId", "FileValue", "MetaInfo", "Author",
            "ModifiedBy", "FailureMessage",
            TimeCreated="dateTime", TimeLastModified="dateTime",
        ),
        _seq(_opt("Properties", "Dictionary")),
    ),
    "SPAttachmentCollection": ComplexType({}, _seq(_many("Attachment", "SPAttachment"))),
    "SPLink": ComplexType(
        _attrs(
            "WebPartId", "Search",
            TargetId="string!", TargetUrl="string!", IsDirty="boolean!", LinkNumber="int",
            Type="unsignedByte", Security="unsignedByte", Dynamic="unsignedByte",
            ServerRel="boolean", Level="unsignedByte",
        )
    ),
    "SPLinkCollection": ComplexType({}, _seq(_many("Link", "SPLink"))),
    "SPList": ComplexType(_LIST_ATTRIBUTES, _LIST_CONTENT),
    "SPDocumentLibrary": ComplexType(
        {
            **_LIST_ATTRIBUTES,
            **_attrs(
                "DocumentTemplateUrl",
                IsCatalog="boolean", ThumbnailSize="int", WebImageHeight="int", WebImageWidth="int",
            ),
        },
        _LIST_CONTENT,
    ),
    "SPFieldCollection": ComplexType(
        {},
        Choice((_many("FieldRef", "SPFieldLink"), _many("Field", "SPField")), 0, UNBOUNDED),
        mixed=True,
    ),
    # SPField, SPFieldLink and SPContentType accept any attribute, so only the typed ones matter.
    "SPField": ComplexType(
        _attrs(
            RowOrdinal="int", RowOrdinal2="int", ListDefaultCompliancetagWrittenTime="dateTime",
            ListDefaultComplianceTagUserId="int", ListDefaultComplianceFlags="int",
        ),
        ANY,
        any_attribute=True,
    ),
    "SPFieldLink": ComplexType(
        _attrs(RowOrdinal="int", RowOrdinal2="int", Hidden="TRUEFALSE", Required="TRUEFALSE"),
        any_attribute=True,
    ),
    "SPContentType": ComplexType(
        _attrs(
            NextChildByte="short", Hidden="TRUEFALSE", ReadOnly="TRUEFALSE", PushDownChanges="boolean"
        ),
        ANY,
        any_attribute=True,
    ),
    "SPContentTypeCollection": ComplexType({}, ANY),
    "SPEventReceiverDefinitionCollection": ComplexType(
        {}, _seq(_many("EventReceiver", "SPEventReceiverDefinition"))
    ),
    "SPEventReceiverDefinition": ComplexType(
        _attrs(
            "Url", "Assembly", "Class", "SolutionId", "Data", "Filter",
            Id="string!", Name="string!", WebId="string!", HostId="string!",
            HostType="SPEventHostType!", Synchronization="SPEventReceiverSynchronization",
            Type="SPEventReceiverType!", SequenceNumber="int!", Credential="int", ItemId="int",
        )
    ),
    "ListDeletedContentTypes": ComplexType(
        {}, _seq(_many("DeletedContentType", "DeletedContentType"))
    ),
    "DeletedContentType": ComplexType(_attrs(ContentTypeId="string!")),
    "SPFolder": ComplexType(
        _attrs(
            "Id", "Name", "Url", "ParentFolderId", "ParentWebId", "ParentWebUrl",
            "ContainingDocumentLibrary", "WelcomePageUrl", "WelcomePageParameters", "Author",
            "ModifiedBy", "ProgId", "SortBehavior",
            ListItemIntId="int", TimeCreated="dateTime", TimeLastModified="dateTime",
        ),
        _seq(_opt("Properties", "Dictionary")),
    ),
    "SPFileVersionCollection": ComplexType({}, _seq(_many("File", "SPFile", 1))),
    "SPListItemVersionCollection": ComplexType({}, _seq(_many("ListItem", "SPListItem", 1))),
    "SPFileVersionEventCollection": ComplexType(
        {}, _seq(_many("VersionEvent", "SPFileVersionEvent", 1))
    ),
    "SPFileVersionEvent": ComplexType(
        _attrs(Id="int", UIVersion="int", Type="int", Time="dateTime", UserId="int")
    ),
    "SPFile": ComplexType(
        _attrs(
            "Name", "Id", "Url", "ParentWebId", "ParentWebUrl", "ParentId", "ListId", "FileValue",
            "CheckinComment", "Version", "Author", "ModifiedBy", "FailureMessage", "SetupPath",
            "SetupPathUser",
            ListItemIntId="int", InDocumentLibrary="boolean", TimeCreated="dateTime",
            TimeLastModified="dateTime", IsGhosted="boolean", SetupPathVersion="byte",
        ),
        _seq(
            _opt("Properties", "Dictionary"),
            _opt("Versions", "SPFileVersionCollection"),
            _opt("Links", "SPLinkCollection"),
            _opt("EventReceivers", "SPEventReceiverDefinitionCollection"),
            _opt("VersionEvents", "SPFileVersionEventCollection"),
        ),
        any_attribute=True,
    ),
    "SPListItem": ComplexType(
        _attrs(
            "Name", "DirName", "FileUrl", "Version", "Id", "DocId", "Author", "ModifiedBy",
            "ParentWebId", "ParentListId", "ParentFolderId", "ModerationComment", "ContentTypeId",
            "ProgId", "ThreadIndex", "UserLoginName", "GroupName", "FailureMessage",
            IntId="int", TimeCreated="dateTime", TimeLastModified="dateTime",
            ModerationStatus="SPModerationStatusType", Order="float",
            UserSolutionActivated="boolean", DocType="ListItemDocType",
        ),
        Choice(
            (
                _opt("Fields", "SPFieldCollection"),
                _opt("Versions", "SPListItemVersionCollection"),
                _opt("Attachments", "SPAttachmentCollection"),
                _opt("Links", "SPLinkCollection"),
                _opt("EventReceivers", "SPEventReceiverDefinitionCollection"),
            ),
            0,
            5,
        ),
        any_attribute=True,
    ),
}

# -- ExportSettings.xml -----------------------------------------------------------------------

_EXPORT_SETTINGS_ENUMS = _enums(
    EXPORT_SETTINGS_NS,
    SPDeploymentObjectType="Folder List ListItem File",
    SPIncludeDescendants="None Content All",
    SPIncludeSecurity="None WssOnly All",
    SPIncludeVersions="LastMajor CurrentVersion LastMajorAndMinor All",
    SPExportMethodType="ExportAll ExportChanges",
)

_EXPORT_SETTINGS_TYPES: dict[str, ComplexType] = {
    # SourceType and IgnoreWebParts reach the service through anyAttribute.
    "SPExportSettings": ComplexType(
        _attrs(
            "FileLocation", "BaseFileName", "ExportChangeToken",
            SiteUrl="string!", IncludeSecurity="SPIncludeSecurity",
            IncludeVersions="SPIncludeVersions", ExportMethod="SPExportMethodType",
            ExportPublicSchema="boolean", ExportFrontEndFileStreams="boolean",
            ExcludeDependencies="boolean",
        ),
        _seq(_many("ExportObjects", "SPExportObjectCollection")),
        any_attribute=True,
    ),
    "SPExportObjectCollection": ComplexType({}, _seq(_many("DeploymentObject", "SPExportObject"))),
    "SPExportObject": ComplexType(
        _attrs(
            "Id", "ParentId", "Url", "ExportChangeToken",
            Type="SPDeploymentObjectType", ExcludeChildren="boolean",
            IncludeDescendants="SPIncludeDescendants",
        )
    ),
}

# -- RootObjectMap.xml ------------------------------------------------------------------------

_ROOT_OBJECT_MAP_ENUMS = _enums(ROOT_OBJECT_MAP_NS, SPDeploymentObjectType="Folder List ListItem File")
_ROOT_OBJECT_MAP_TYPES: dict[str, ComplexType] = {
    "SPRootObjects": ComplexType({}, _seq(_many("RootObject", "SPRootObject"))),
    "SPRootObject": ComplexType(
        _attrs("Id", "ParentId", "WebUrl", "Url", Type="SPDeploymentObjectType", IsDependency="boolean")
    ),
}

# -- SystemData.xml ---------------------------------------------------------------------------

_SYSTEM_DATA_ENUMS = _enums(SYSTEM_DATA_NS, SPDeploymentObjectType="Site Web Folder List ListItem File")
_SYSTEM_DATA_TYPES: dict[str, ComplexType] = {
    # NOTE: ManifestFiles and SystemObjects are optional here because their minOccurs is not
    # published; the importer still needs at least one ManifestFile.
    "SPSystemData": ComplexType(
        {},
        _seq(
            Particle("SchemaVersion", "SPSchemaVersion", 1, 1),
            _opt("ManifestFiles", "SPManifestFiles"),
            _opt("SystemObjects", "SPSystemObjects"),
            _opt("RootWebOnlyLists", "OpenContent"),
        ),
    ),
    "SPSchemaVersion": ComplexType(
        _attrs("Version", "Build", "DatabaseVersion", "SiteVersion", "ObjectsProcessed")
    ),
    "SPManifestFiles": ComplexType({}, _seq(_many("ManifestFile", "SPManifestFile"))),
    "SPManifestFile": ComplexType(_attrs("Name")),
    "SPSystemObjects": ComplexType({}, _seq(_many("SystemObject", "SPSystemObject"))),
    "SPSystemObject": ComplexType(_attrs("Id", "Url", Type="SPDeploymentObjectType")),
    "OpenContent": ComplexType({}, ANY, any_attribute=True),
}

# -- UserGroup.xml ----------------------------------------------------------------------------

_USER_GROUP_TYPES: dict[str, ComplexType] = {
    "DeploymentUserGroupMap": ComplexType(
        {}, _seq(_opt("Users", "DeploymentUsers"), _opt("Groups", "DeploymentGroups"))
    ),
    "DeploymentUsers": ComplexType({}, _seq(_many("User", "DeploymentUser"))),
    "DeploymentUser": ComplexType(
        _attrs(
            "Email", "SystemId", "Flags",
            Id="string!", Name="string!", Login="string!", IsDomainGroup="boolean",
            IsSiteAdmin="boolean", IsDeleted="boolean",
        )
    ),
    "DeploymentGroups": ComplexType({}, _seq(_many("Group", "DeploymentGroup"))),
    "DeploymentGroup": ComplexType(
        _attrs(
            "Description", "RequestToJoinLeaveEmailSetting",
            Id="string!", Name="string!", Owner="string!", OwnerIsUser="boolean!",
            OnlyAllowMembersViewMembership="boolean", AllowMembersEditMembership="boolean",
            AllowRequestToJoinLeave="boolean", AutoAcceptRequestToJoinLeave="boolean",
        ),
        _seq(_many("Member", "DeploymentGroupMember")),
    ),
    "DeploymentGroupMember": ComplexType(_attrs("UserId")),
}

# -- Requirements.xml, LookupListMap.xml, ViewFormsList.xml -----------------------------------

_REQUIREMENTS_TYPES: dict[str, ComplexType] = {
    "SPImportRequirements": ComplexType({}, _seq(_many("Requirement", "SPRequirement"))),
    # NOTE: Type is an enumeration (FeatureDefinition, WebTemplate, WebPart, Language...) whose
    # full value list is not published for SharePoint Online, so any string is accepted.
    "SPRequirement": ComplexType(_attrs("Type", "Id", "Name", "Data")),
}

_LOOKUP_LIST_MAP_ENUMS = _enums(LOOKUP_LIST_MAP_NS, truefalse_Only_Lowercase="true false")
_LOOKUP_LIST_MAP_TYPES: dict[str, ComplexType] = {
    "SPLookupLists": ComplexType({}, _seq(_many("LookupList", "SPLookupList"))),
    "SPLookupList": ComplexType(
        _attrs(Id="string!", Url="string!", Included="truefalse_Only_Lowercase!"),
        _seq(_many("LookupItems", "SPLookupItems")),
    ),
    "SPLookupItems": ComplexType({}, _seq(_many("LookupItem", "SPLookupItem"))),
    "SPLookupItem": ComplexType(
        _attrs(Id="int!", DocId="string!", Url="string!", Included="truefalse_Only_Lowercase!")
    ),
}


def _view_forms_schema(namespace: str) -> Schema:
    enums = _enums(namespace, ViewFormType="View Forms")
    types = {
        "SPViewFormsList": ComplexType({}, _seq(_many("ViewForm", "SPViewForm"))),
        "SPViewForm": ComplexType(_attrs(Id="string!", Type="ViewFormType!")),
    }
    return Schema(namespace, "ViewFormsList", "SPViewFormsList", types, enums)


SCHEMAS: dict[str, Schema] = {
    schema.namespace: schema
    for schema in (
        Schema(MANIFEST_NS, "SPObjects", "SPGenericObjectCollection", _MANIFEST_TYPES, _MANIFEST_ENUMS),
        Schema(
            EXPORT_SETTINGS_NS, "ExportSettings", "SPExportSettings", _EXPORT_SETTINGS_TYPES,
            _EXPORT_SETTINGS_ENUMS,
        ),
        Schema(ROOT_OBJECT_MAP_NS, "RootObjects", "SPRootObjects", _ROOT_OBJECT_MAP_TYPES,
               _ROOT_OBJECT_MAP_ENUMS),
        Schema(SYSTEM_DATA_NS, "SystemData", "SPSystemData", _SYSTEM_DATA_TYPES, _SYSTEM_DATA_ENUMS),
        Schema(USER_GROUP_NS, "UserGroupMap", "DeploymentUserGroupMap", _USER_GROUP_TYPES, {}),
        Schema(REQUIREMENTS_NS, "Requirements", "SPImportRequirements", _REQUIREMENTS_TYPES, {}),
        Schema(LOOKUP_LIST_MAP_NS, "LookupLists", "SPLookupLists", _LOOKUP_LIST_MAP_TYPES,
               _LOOKUP_LIST_MAP_ENUMS),
        _view_forms_schema(VIEW_FORMS_LIST_NS),
        _view_forms_schema(VIEW_FORMS_LIST_NS_PLURAL),
    )
}

# The namespace each fixed-name package file must use; manifest files may have any name.
FILE_NAMESPACES: dict[str, tuple[str, ...]] = {
    "ExportSettings.xml": (EXPORT_SETTINGS_NS,),
    "SystemData.xml": (SYSTEM_DATA_NS,),
    "UserGroup.xml": (USER_GROUP_NS,),
    "RootObjectMap.xml": (ROOT_OBJECT_MAP_NS,),
    "Requirements.xml": (REQUIREMENTS_NS,),
    "LookupListMap.xml": (LOOKUP_LIST_MAP_NS,),
    "ViewFormsList.xml": (VIEW_FORMS_LIST_NS, VIEW_FORMS_LIST_NS_PLURAL),
}


# -- simple types -----------------------------------------------------------------------------

XS = "http://www.w3.org/2001/XMLSchema"
_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|-?INF|NaN)")
_DATETIME = re.compile(
    r"-?(\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?"
)
_INTEGER_RANGES: dict[str, tuple[int, int, str]] = {
    "int": (-(2**31), 2**31 - 1, "Int32"),
    "short": (-(2**15), 2**15 - 1, "Int16"),
    "byte": (-128, 127, "SByte"),
    "unsignedByte": (0, 255, "Byte"),
}


def _check_builtin(type_name: str, value: str) -> str | None:
    """Return the .NET-style reason why ``value`` is not a valid ``type_name``, or None."""
    collapsed = value.strip()
    if type_name == "boolean":
        if collapsed in ("true", "false", "1", "0"):
            return None
        return f"The string '{value}' is not a valid Boolean value."
    if type_name in _INTEGER_RANGES:
        low, high, dotnet = _INTEGER_RANGES[type_name]
        if _INTEGER.fullmatch(collapsed) and low <= int(collapsed) <= high:
            return None
        return f"The string '{value}' is not a valid {dotnet} value."
    if type_name == "float":
        if _FLOAT.fullmatch(collapsed):
            return None
        return f"The string '{value}' is not a valid Single value."
    if type_name == "dateTime":
        match = _DATETIME.fullmatch(collapsed)
        if match and _date_parts_valid(match):
            return None
        return f"The string '{value}' is not a valid XsdDateTime value."
    return None


def _date_parts_valid(match: re.Match[str]) -> bool:
    month, day = int(match.group(2)), int(match.group(3))
    hour, minute, second = int(match.group(4)), int(match.group(5)), int(match.group(6))
    return 1 <= month <= 12 and 1 <= day <= 31 and hour <= 24 and minute <= 59 and second <= 59


# -- validation -------------------------------------------------------------------------------


def validate(root: XmlElement, *, expected_namespaces: tuple[str, ...] | None = None) -> Schema:
    """Validate a parsed package file and return the schema it matched.

    ``expected_namespaces`` restricts which schemas the root may use (for the fixed-name files),
    and None accepts any package schema. Raises XmlSchemaError on the first violation, because
    the service also stops at the first one.
    """
    schema = SCHEMAS.get(root.namespace)
    allowed = expected_namespaces is None or root.namespace in expected_namespaces
    if schema is None or root.name != schema.root_name or not allowed:
        qualified = f"{root.namespace}:{root.name}" if root.namespace else root.name
        raise XmlSchemaError(
            f"The '{qualified}' element is not declared.", line=root.line, column=root.column
        )
    _Validator(schema).element(root, schema.root_type)
    return schema


def load_package_file(data: bytes, file_name: str) -> XmlElement:
    """Parse and validate one package file; fixed-name files must use their own schema."""
    root = parse_xml(data)
    validate(root, expected_namespaces=FILE_NAMESPACES.get(file_name))
    return root


class _Validator:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def element(self, element: XmlElement, type_name: str) -> None:
        complex_type = self.schema.types[type_name]
        self._attributes(element, complex_type)
        content = complex_type.content
        if isinstance(content, AnyContent):
            return
        if element.text.strip() and not complex_type.mixed:
            self._text_error(element, content)
        if content is None:
            if element.children:
                child = element.children[0]
                raise XmlSchemaError(
                    f"The element '{element.name}' in namespace '{element.namespace}' cannot "
                    f"contain child element '{child.name}' because the parent element's content "
                    "model is empty.",
                    line=child.line,
                    column=child.column,
                )
            return
        if isinstance(content, Sequence):
            self._sequence(element, content)
        else:
            self._choice(element, content)

    def _attributes(self, element: XmlElement, complex_type: ComplexType) -> None:
        for name, value in element.attributes.items():
            if name.startswith(f"{{{XSI_NAMESPACE}}}"):
                continue
            declared = complex_type.attributes.get(name)
            if declared is None:
                if complex_type.any_attribute:
                    continue
                local_name = name.split("}", 1)[-1] if name.startswith("{") else name
                raise XmlSchemaError(
                    f"The '{local_name}' attribute is not declared.",
                    line=element.line,
                    column=element.column,
                )
            reason = self._value_error(declared.type, value)
            if reason is not None:
                raise XmlSchemaError(
                    f"The '{name}' attribute is invalid - The value '{value}' is invalid according "
                    f"to its datatype '{self._type_label(declared.type)}' - {reason}",
                    line=element.line,
                    column=element.column,
                )
        for name, declared in complex_type.attributes.items():
            if declared.required and name not in element.attributes:
                raise XmlSchemaError(
                    f"The required attribute '{name}' is missing.",
                    line=element.line,
                    column=element.column,
                )

    def _value_error(self, type_name: str, value: str) -> str | None:
        enumeration = self.schema.enumerations.get(type_name)
        if enumeration is not None:
            return None if value in enumeration.values else "The Enumeration constraint failed."
        return _check_builtin(type_name, value)

    def _type_label(self, type_name: str) -> str:
        enumeration = self.schema.enumerations.get(type_name)
        return enumeration.type_name if enumeration else f"{XS}:{type_name}"

    def _sequence(self, element: XmlElement, content: Sequence) -> None:
        particles = content.particles
        index = 0
        count = 0
        for child in element.children:
            expected = self._expected_at(particles, index, count)
            while True:
                if index >= len(particles):
                    self._invalid_child(element, child, expected)
                particle = particles[index]
                if self._matches(child, particle) and (particle.max is None or count < particle.max):
                    count += 1
                    self.element(child, particle.type)
                    break
                if count < particle.min:
                    self._invalid_child(element, child, expected)
                index += 1
                count = 0
        if index < len(particles):
            particle = particles[index]
            if count < particle.min:
                self._incomplete(element, [particle.name])
            for later in particles[index + 1 :]:
                if later.min > 0:
                    self._incomplete(element, [later.name])

    @staticmethod
    def _expected_at(particles: tuple[Particle, ...], index: int, count: int) -> list[str]:
        """Names that may come next: from ``index`` up to and including the first required one."""
        expected: list[str] = []
        for position in range(index, len(particles)):
            particle = particles[position]
            used = count if position == index else 0
            if particle.max is not None and used >= particle.max:
                continue
            expected.append(particle.name)
            if used < particle.min:
                break
        return expected

    def _choice(self, element: XmlElement, content: Choice) -> None:
        by_name = {particle.name: particle for particle in content.particles}
        names = [particle.name for particle in content.particles]
        for position, child in enumerate(element.children):
            particle = by_name.get(child.name) if child.namespace == self.schema.namespace else None
            too_many = content.max is not None and position >= content.max
            if particle is None or too_many:
                self._invalid_child(element, child, [] if too_many else names)
            self.element(child, particle.type)
        if len(element.children) < content.min:
            self._incomplete(element, names)

    def _matches(self, child: XmlElement, particle: Particle) -> bool:
        return child.namespace == self.schema.namespace and child.name == particle.name

    def _invalid_child(self, element: XmlElement, child: XmlElement, expected: list[str]) -> None:
        where = f" in namespace '{child.namespace}'" if child.namespace else ""
        message = (
            f"The element '{element.name}' in namespace '{element.namespace}' has invalid child "
            f"element '{child.name}'{where}."
        )
        if expected:
            message += (
                f" List of possible elements expected: '{', '.join(expected)}' in namespace "
                f"'{self.schema.namespace}'."
            )
        raise XmlSchemaError(message, line=child.line, column=child.column)

    def _incomplete(self, element: XmlElement, expected: list[str]) -> None:
        raise XmlSchemaError(
            f"The element '{element.name}' in namespace '{element.namespace}' has incomplete "
            f"content. List of possible elements expected: '{', '.join(expected)}' in namespace "
            f"'{self.schema.namespace}'.",
            line=element.line,
            column=element.column,
        )

    def _text_error(self, element: XmlElement, content: Content) -> None:
        message = f"The element '{element.name}' in namespace '{element.namespace}' cannot contain text."
        if content is None:
            message = (
                f"The element '{element.name}' in namespace '{element.namespace}' cannot contain "
                "text because its content model is empty."
            )
        elif isinstance(content, (Sequence, Choice)):
            names = ", ".join(particle.name for particle in content.particles)
            message += (
                f" List of possible elements expected: '{names}' in namespace '{self.schema.namespace}'."
            )
        raise XmlSchemaError(message, line=element.line, column=element.column)
